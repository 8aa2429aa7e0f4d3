"""The fine-tune job contract between the server and the flows, which never import each other: the server starts
runs of this deployment, and a run leaves the id of the model it ended with in this artifact."""
FINETUNE_FLOW = "finetune-model"
FINETUNE_DEPLOYMENT = f"{FINETUNE_FLOW}/on-demand"  # prefect.yaml names the deployment `on-demand`
RESULT_ARTIFACT = "fine-tuned-model"

"""The loss curve of a fine-tune: a PNG beside the adapter, and a Prefect markdown artifact that embeds it."""
from __future__ import annotations

import base64
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.finetune import TrainingOutcome


def plot_losses(outcome: TrainingOutcome, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    for label, points, style in (("train", outcome.train_losses, "-"), ("valid", outcome.valid_losses, "o-")):
        if points:
            steps, losses = zip(*points)
            axes.plot(steps, losses, style, label=label)
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


@task(task_run_name="report fine-tune {name}")
def record_training_report(name: str, outcome: TrainingOutcome) -> str:
    """Draw the curve into the training directory and publish a markdown artifact with it and the before/after table."""
    png = plot_losses(outcome, Path(outcome.directory) / "loss_curve.png", f"fine-tuning {name}")
    image = base64.b64encode(png.read_bytes()).decode()
    rows = "\n".join(f"| {p['prompt'][:40]} | {'✅' if p['match_before'] else '❌'} {p['answer_before'][:30]!r} | "
                     f"{'✅' if p['match_after'] else '❌'} {p['answer_after'][:30]!r} |" for p in outcome.probes)
    markdown = (f"# Fine-tuning {name}\n\n![loss curve](data:image/png;base64,{image})\n\n"
                f"| | before | after |\n|---|---|---|\n"
                f"| validation loss | {outcome.valid_loss_before:.4f} | {outcome.valid_loss_after:.4f} |\n"
                f"| exact match | {outcome.exact_match_before}/{len(outcome.probes)} | "
                f"{outcome.exact_match_after}/{len(outcome.probes)} |\n")
    if rows:
        markdown += f"\n| probe | before | after |\n|---|---|---|\n{rows}\n"
    create_markdown_artifact(markdown, key=f"finetune-{name}".replace("_", "-").replace(".", "-").lower()[:60],
                             description=f"fine-tuning of {name}")
    return markdown

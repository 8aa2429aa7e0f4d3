"""The whole loop through the official openai SDK only: upload, fine-tune job on a Prefect worker, hot reload,
chat with the fine-tuned model. Also: malformed uploads, failed gates and cancellation."""
from __future__ import annotations

import time
import uuid

import openai
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from tests.fixtures.memorise import MEMORISING, PAIRS, probes, training_jsonl
from tests.serving.conftest import server_with_worker

ENDED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_mlx, prefect_server):
    """Deployments registered, a worker and a server sharing one factory root."""
    root = tmp_path_factory.mktemp("fine-tuning")
    with server_with_worker(root, tiny_mlx) as server:
        yield server


def wait_for(client, job_id, statuses, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(1)
    pytest.fail(f"job {job_id} still {job.status} after {timeout}s")


def ask(client, model, question):
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=8, temperature=0)
    return reply.choices[0].message.content


def test_upload_fine_tune_and_chat_with_the_result(stack):
    client = stack.client
    upload = client.files.create(file=("train.jsonl", training_jsonl().encode()), purpose="fine-tune")
    assert upload.purpose == "fine-tune" and upload.bytes > 0
    assert upload.id in [f.id for f in client.files.list().data]
    assert [ask(client, "tiny", q) == a for q, a in PAIRS] == [False] * 4  # the base does not know

    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id, suffix="zorbia",
                                         hyperparameters=MEMORISING, extra_body={"probes": probes()})
    assert job.status == "queued" and job.id.startswith("ftjob-") and job.training_file == upload.id
    done = wait_for(client, job.id, ENDED)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == "tiny-ft-zorbia@1" and done.trained_tokens > 0

    events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
    steps = [e for e in events if e.type == "metrics"]
    assert steps and all("step" in e.data for e in steps)

    deadline = time.monotonic() + 5  # the server's watcher picks the new model up without a restart
    while "tiny-ft-zorbia" not in [m.id for m in client.models.list().data] and time.monotonic() < deadline:
        time.sleep(0.2)
    # the job's model id is one that /v1/models lists (OpenAI's contract), and it names its base
    listed = {m.id: m for m in client.models.list().data}
    assert done.fine_tuned_model in listed and listed[done.fine_tuned_model].model_extra["parent"] == "tiny@1"
    assert [ask(client, done.fine_tuned_model, q) for q, _ in PAIRS] == [a for _, a in PAIRS]
    assert job.id in [j.id for j in client.fine_tuning.jobs.list().data]

    # an identical rerun publishes nothing new, and still reports the model it ended with
    again = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id, suffix="zorbia",
                                           hyperparameters=MEMORISING, extra_body={"probes": probes()})
    rerun = wait_for(client, again.id, ENDED)
    assert rerun.status == "succeeded" and rerun.fine_tuned_model == "tiny-ft-zorbia@1"
    assert stack.registry.resolve("tiny-ft-zorbia").version == 1


def test_a_malformed_training_file_is_refused_at_upload_naming_its_line(stack):
    bad = training_jsonl(1) + '{"messages": [{"role": "user", "content": "unanswered"}]}\n'
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client.files.create(file=("bad.jsonl", bad.encode()), purpose="fine-tune")
    assert "bad.jsonl:5: a chat example needs at least one assistant message" in caught.value.message
    assert caught.value.body["param"] == "file"


def test_a_job_whose_gate_fails_ends_failed_and_publishes_nothing(stack):
    client = stack.client
    upload = client.files.create(file=("train.jsonl", training_jsonl().encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id, suffix="weak",
                                         hyperparameters={"method": "lora", "iters": 2},
                                         extra_body={"min_valid_loss_drop": 0.9})
    done = wait_for(client, job.id, ENDED)
    assert done.status == "failed" and "gate failed" in done.error.message and done.fine_tuned_model is None
    assert "tiny-ft-weak" not in [m.id for m in client.models.list().data]


def test_a_cancelled_job_ends_cancelled_and_publishes_nothing(stack):
    client = stack.client
    upload = client.files.create(file=("train.jsonl", training_jsonl().encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id, suffix="endless",
                                         hyperparameters={"method": "full", "iters": 100000})
    wait_for(client, job.id, {"running"} | ENDED)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    # "cancelled" is reported from the moment Prefect is asked to cancel; the run itself must really stop:
    # the worker kills its process and Prefect records CANCELLED.
    run_id = uuid.UUID(job.id.removeprefix("ftjob-"))
    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as prefect:
        while prefect.read_flow_run(run_id).state.type != StateType.CANCELLED and time.monotonic() < deadline:
            time.sleep(1)
        assert prefect.read_flow_run(run_id).state.type == StateType.CANCELLED
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert "tiny-ft-endless" not in stack.registry.names()


def test_unknown_models_files_and_jobs_are_not_found(stack):
    client = stack.client
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="nope", training_file="file-x")
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="tiny", training_file="file-missing")
    assert caught.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-00000000-0000-0000-0000-000000000000")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    upload = client.files.create(file=("t.jsonl", training_jsonl(1).encode()), purpose="fine-tune")
    assert client.files.delete(upload.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.delete(upload.id)

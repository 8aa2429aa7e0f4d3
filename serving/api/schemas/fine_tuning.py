"""The body of POST /v1/fine_tuning/jobs: OpenAI's fields (including its newer `method` object) plus this server's
own hyperparameters, every one typed, so a mistyped field is a 400 naming it."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from factory.spec import FineTuneMethod, Probe
from serving.api.schemas import Lenient


class Hyperparameters(Lenient):
    """OpenAI's fine-tuning hyperparameters ("auto" allowed), plus this server's own: method, iters, rank..."""

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Literal["auto"] | None = None
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] | None = None
    method: FineTuneMethod | None = None
    iters: Annotated[int, Field(ge=1, le=100_000)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    rank: Annotated[int, Field(ge=1, le=1024)] | None = None
    layers: Annotated[int, Field(ge=1)] | None = None


class Supervised(Lenient):
    hyperparameters: Hyperparameters | None = None


class Method(Lenient):
    """OpenAI's `{"type": "supervised", "supervised": {"hyperparameters": {...}}}`."""

    type: Literal["supervised"] = "supervised"
    supervised: Supervised | None = None


class FineTuningJobRequest(Lenient):
    model: Annotated[str, Field(min_length=1)]
    training_file: Annotated[str, Field(min_length=1)]
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    probes: list[Probe] | None = None  # [{"messages": [...], "expect": {...}}]: exact match before/after
    min_valid_loss_drop: Annotated[float, Field(ge=0, lt=1)] = 0.0

    def resolved_hyperparameters(self) -> dict[str, Any]:
        """Top-level hyperparameters win over the ones nested in `method.supervised`."""
        nested = self.method and self.method.supervised and self.method.supervised.hyperparameters
        return {**(nested.model_dump(exclude_none=True) if nested else {}),
                **(self.hyperparameters.model_dump(exclude_none=True) if self.hyperparameters else {})}

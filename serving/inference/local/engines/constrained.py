"""What both engines do with a sequence that has a grammar (`constraints.py`), in their own terms.

- llama.cpp samples in numpy: `masked` is the logits row with the grammar's mask applied (after logit bias and
  penalties, before temperature and top-p), so every sampling mode, greedy included, stays inside the grammar.
- MLX samples inside mlx-lm's `BatchGenerator`, which computes the next token before it hands back the previous
  one: `mlx_processor` is the sequence's last logits processor, and it consumes the token fed to the model (the
  one sampled last step) before masking the logits of the next.
- `settle`: after a constrained sequence's token, the outputs the engine reports. A completed grammar ends the
  sequence right there with an end-of-sequence token ("stop", no extra decode step, and even when that token was
  also its last allowed by max_tokens: the answer is whole); a matcher error ends it with "error".

Constrained sequences never draft tokens (`llamacpp.py` skips them in `_propose`): a draft would be checked against
unmasked rows, and masking the verification rows would need the matcher advanced over each draft and rolled back.
"""
from __future__ import annotations

import numpy as np

from serving.inference.local.constraints import Constraint, ConstraintError
from serving.inference.local.engines.base import StepOutput


def masked(constraint: Constraint, logits: np.ndarray) -> np.ndarray | None:
    """The logits row with every token outside the grammar at -inf; None when the grammar cannot continue
    (`constraint.error` says why)."""
    try:
        return constraint.mask(logits)
    except ConstraintError:
        return None


def failed(uid: int, constraint: Constraint) -> StepOutput:
    return StepOutput(uid=uid, token=-1, finish_reason="error", error=constraint.error)


def settle(constraint: Constraint, output: StepOutput, end_token: int, consumed: bool = False) -> list[StepOutput]:
    """The outputs a constrained sequence's new token becomes. `consumed`: the matcher has already taken it (MLX)."""
    if output.finish_reason == "stop":  # an end-of-sequence token: the grammar allowed it, so it was complete
        return [output]
    if not consumed and constraint.error is None:
        try:
            constraint.consume(output.token)
        except ConstraintError:
            pass
    if constraint.error is not None:
        return [failed(output.uid, constraint)]
    if constraint.done:
        output.finish_reason = None
        return [output, StepOutput(uid=output.uid, token=end_token, finish_reason="stop")]
    return [output]


def mlx_processor(constraint: Constraint):
    """A logits processor (tokens so far, logits (1, vocab)) → logits, for mlx-lm's BatchGenerator. It never
    raises: an exception there would fail the whole batch, so an error stays on the constraint for `settle`."""
    import mlx.core as mx

    started = [False]

    def process(tokens, logits):
        if constraint.error is not None:
            return logits
        try:
            if started[0]:  # the first call sees the prompt's last token; later ones the token sampled before
                constraint.consume(int(tokens[-1].item()))
            started[0] = True
            allowed = constraint.allowed(logits.shape[-1])
        except ConstraintError:
            return logits
        return mx.where(mx.array(allowed), logits, -mx.inf)

    return process

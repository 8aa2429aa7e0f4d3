"""Constrained decoding on both engines with the tiny random-weight model: whatever the weights want, a grammar's
output parses and validates, the grammar ends the sequence ("stop") as soon as the answer is complete, max_tokens
still cuts it ("length"), constrained and free sequences share decode steps, a grammar that breaks mid-generation
fails its sequence alone, and speculative decoding never drafts for a constrained sequence."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pytest

from serving.inference.local import constraints
from serving.inference.local.constraints import json_object_grammar, json_schema_grammar, lark_grammar
from serving.inference.local.engines.base import EngineOptions
from serving.inference.local.engines.llamacpp import LlamaCppEngine
from serving.inference.local.engines.mlx import MlxEngine
from serving.inference.local.scheduler import Scheduler
from serving.inference.types import DoneEvent, InvalidRequest, SamplingParams, TokenEvent, queued_events
from tests.fixtures.engine_runs import Run, Speculation, generate

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "kind": {"enum": ["tool", "person", "place"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "active": {"type": "boolean"}},
            "required": ["id", "active"],
            "additionalProperties": False,
        },
        "score": {"type": "integer", "minimum": -5, "maximum": 5},
    },
    "required": ["name", "kind", "tags", "owner"],
    "additionalProperties": False,
}
CODE_EDIT = ("Rename the variable total to count in this code:\n"
             "def add(values):\n    total = 0\n    for value in values:\n        total += value\n    return total\n")
SEEDS = range(8)  # one batch of eight sequences per temperature


@pytest.fixture(scope="module", params=["llamacpp", "mlx"])
def engine(request, tiny_gguf, tiny_mlx):
    if request.param == "llamacpp":
        loaded = LlamaCppEngine.load(tiny_gguf, max_batch=8, context_length=1024)
    else:
        loaded = MlxEngine.load(tiny_mlx, 8, 1024)
    yield loaded
    loaded.close()


def prompt(engine, text: str = "Describe a thing as JSON.") -> list[int]:
    return engine.encode(engine.render_chat([{"role": "user", "content": text}]))


def text_of(engine, run) -> str:
    """The text a run's tokens make (the end-of-sequence token that stops it is not text)."""
    detokenizer = engine.detokenizer()
    tokens = run.tokens[:-1] if run.finish_reason == "stop" else run.tokens
    return "".join(detokenizer.add_token(token) for token in tokens) + detokenizer.finalize()


def runs_with_seeds(engine, grammar: str, temperature: float, max_tokens: int = 200):
    """One batch of sequences, one per seed, all under `grammar`."""
    params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=1.0, seed=seed, grammar=grammar)
              for seed in SEEDS]
    uids = [engine.insert(prompt(engine), p) for p in params]
    tokens: dict[int, list[int]] = {uid: [] for uid in uids}
    finish: dict[int, str] = {}
    while len(finish) < len(uids):
        for output in engine.step():
            assert output.uid not in finish, "a token after the sequence finished"
            tokens[output.uid].append(output.token)
            if output.finish_reason is not None:
                finish[output.uid] = output.finish_reason
    return [Run(tokens=tokens[uid], finish_reason=finish[uid]) for uid in uids]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_output_always_validates_and_the_grammar_ends_it(engine, temperature):
    grammar = json_schema_grammar(SCHEMA, strict=True)
    texts = set()
    for run in runs_with_seeds(engine, grammar, temperature):
        assert run.finish_reason == "stop", "the complete answer ended the sequence, well before max_tokens"
        assert len(run.tokens) < 200
        answer = json.loads(text_of(engine, run))
        jsonschema.validate(answer, SCHEMA)
        texts.add(json.dumps(answer))
    if temperature > 0:
        assert len(texts) > 1, "sampling still samples: different seeds give different answers"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_object_parses_whenever_it_ends_and_max_tokens_cuts_it_honestly(engine, temperature):
    # Any JSON object lets a random model write an endless key; what it finishes must be an object, and what
    # max_tokens cuts is reported as cut.
    stopped = 0
    for run in runs_with_seeds(engine, json_object_grammar(), temperature, max_tokens=120):
        if run.finish_reason == "stop":
            assert isinstance(json.loads(text_of(engine, run)), dict)
            stopped += 1
        else:
            assert run.finish_reason == "length" and len(run.tokens) == 120
            assert text_of(engine, run).startswith("{")
    if temperature > 0:
        assert stopped > 0


def test_max_tokens_cuts_a_constrained_answer_with_length(engine):
    [run] = generate(engine, [prompt(engine)], max_tokens=4, grammar=json_schema_grammar(SCHEMA, strict=True))
    assert run.finish_reason == "length" and len(run.tokens) == 4
    assert text_of(engine, run).startswith('{"')


def test_a_short_grammar_stops_at_once(engine):
    grammar = json_schema_grammar({"enum": ["yes", "no"]}, strict=True)
    for run in runs_with_seeds(engine, grammar, 1.0, max_tokens=50):
        assert run.finish_reason == "stop" and len(run.tokens) <= 6
        assert json.loads(text_of(engine, run)) in ("yes", "no")
    [run] = generate(engine, [prompt(engine)], max_tokens=50, grammar=lark_grammar('start: "ok" | "fine"'))
    assert run.finish_reason == "stop" and text_of(engine, run) in ("ok", "fine")


def test_constrained_and_free_sequences_share_decode_steps(engine):
    """Each step yields a token for every sequence of a mixed batch, and the free sequence's greedy tokens are the
    ones it gets beside another free sequence: only the constrained row is masked."""
    first, second = prompt(engine, "Tell me about paths."), prompt(engine)
    free = SamplingParams(max_tokens=24, temperature=0, top_p=1.0)
    constrained = SamplingParams(max_tokens=24, temperature=0, top_p=1.0,
                                 grammar=json_schema_grammar(SCHEMA, strict=True))
    beside_free = generate(engine, [first, second], max_tokens=24)[0]
    free_uid, constrained_uid = engine.insert(first, free), engine.insert(second, constrained)
    tokens: dict[int, list[int]] = {free_uid: [], constrained_uid: []}
    finished: set[int] = set()
    steps_with_both = 0
    while len(finished) < 2:
        outputs = engine.step()
        steps_with_both += {o.uid for o in outputs} == {free_uid, constrained_uid}
        for output in outputs:
            tokens[output.uid].append(output.token)
            if output.finish_reason is not None:
                finished.add(output.uid)
    assert tokens[free_uid] == beside_free.tokens
    assert steps_with_both >= 20
    detokenizer = engine.detokenizer()
    assert "".join(detokenizer.add_token(t) for t in tokens[constrained_uid]).startswith('{"name": "')


def break_matcher(constraint) -> None:
    """Feed the matcher a token its grammar refuses (as a bug would): it enters its error state for good."""
    refused = int(np.flatnonzero(~constraint.allowed(constraint.tokens))[0])
    assert not constraint.matcher.consume_token(refused) and constraint.matcher.is_error()


def test_a_grammar_that_breaks_mid_generation_fails_its_sequence_alone(engine):
    """A matcher in an error state ends its sequence with "error"; the free sequence beside it runs to its end."""
    free = engine.insert(prompt(engine), SamplingParams(max_tokens=12, temperature=0, top_p=1.0))
    broken = engine.insert(prompt(engine), SamplingParams(max_tokens=12, temperature=0, top_p=1.0,
                                                          grammar=json_object_grammar()))
    engine.step()
    constraint = engine.constraints[broken] if isinstance(engine, MlxEngine) else engine.active[broken].constraint
    break_matcher(constraint)
    finish: dict[int, str] = {}
    errors: dict[int, str | None] = {}
    for _ in range(40):
        for output in engine.step():
            if output.finish_reason is not None:
                finish[output.uid], errors[output.uid] = output.finish_reason, output.error
        if len(finish) == 2:
            break
    assert finish[broken] == "error" and finish[free] in ("length", "stop")
    assert "constrained decoding failed" in errors[broken]


def test_the_scheduler_reports_a_broken_grammar_as_an_error_event(tiny_gguf):
    engine = LlamaCppEngine.load(tiny_gguf, max_batch=2, context_length=1024)
    original = constraints.Constraint.consume

    def refuse_the_third(self, token):
        self.taken = getattr(self, "taken", 0) + 1
        if self.taken == 3:
            break_matcher(self)
        return original(self, token)

    async def run():
        scheduler = Scheduler(engine, max_batch=2, queue_size=4, name="constrained-test")
        events: asyncio.Queue = asyncio.Queue()
        params = [SamplingParams(max_tokens=30, temperature=0, top_p=1.0, grammar=json_object_grammar()),
                  SamplingParams(max_tokens=8, temperature=0, top_p=1.0)]
        scheduler.submit(prompt(engine), params, events)
        received = [event async for event in queued_events(events, 2)]
        scheduler.stop()
        return received

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constraints.Constraint, "consume", refuse_the_third)
        received = asyncio.run(run())
    done = {event.index: event for event in received if isinstance(event, DoneEvent)}
    assert done[0].finish_reason == "error" and "constrained decoding failed" in done[0].error
    assert done[1].finish_reason == "length" and done[1].completion_tokens == 8
    assert "".join(e.text for e in received if isinstance(e, TokenEvent) and e.index == 0).startswith("{")
    engine.close()


def test_speculative_decoding_never_drafts_for_a_constrained_sequence(tiny_gguf):
    """Beside a free sequence that prompt lookup drafts for, the constrained one gets no drafts and the tokens it
    gets without speculation."""
    plain = LlamaCppEngine.load(tiny_gguf, max_batch=2, context_length=1024)
    lookup = LlamaCppEngine.load(tiny_gguf, max_batch=2, context_length=1024,
                                 options=EngineOptions(prompt_lookup=True))
    grammar = json_schema_grammar(SCHEMA, strict=True)
    code = prompt(plain, CODE_EDIT)
    [expected] = generate(plain, [code], max_tokens=200, grammar=grammar)
    free = lookup.insert(code, SamplingParams(max_tokens=64, temperature=0, top_p=1.0))
    constrained = lookup.insert(code, SamplingParams(max_tokens=200, temperature=0, top_p=1.0, grammar=grammar))
    tokens: dict[int, list[int]] = {free: [], constrained: []}
    drafted: dict[int, int] = {free: 0, constrained: 0}
    finished: set[int] = set()
    while len(finished) < 2:
        for output in lookup.step():
            tokens[output.uid].append(output.token)
            drafted[output.uid] += output.drafted
            if output.finish_reason is not None:
                finished.add(output.uid)
    assert drafted[free] > 0 and drafted[constrained] == 0
    assert tokens[constrained] == expected.tokens and expected.finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(lookup, expected)), SCHEMA)
    plain.close()
    lookup.close()


def test_schemas_and_grammars_llguidance_refuses_are_invalid_requests():
    with pytest.raises(InvalidRequest) as refused:
        json_schema_grammar({"type": "string", "pattern": "(?<=a)b"}, strict=True)
    assert refused.value.param == "response_format" and "look-around" in str(refused.value)
    with pytest.raises(InvalidRequest, match="Invalid type"):
        json_schema_grammar({"type": "nonsense"}, strict=False, param="tools[0].function.parameters")
    # a keyword llguidance does not implement: refused when strict, ignored otherwise
    with pytest.raises(InvalidRequest, match="not"):
        json_schema_grammar({"type": "object", "not": {"required": ["a"]}}, strict=True)
    assert json_schema_grammar({"type": "object", "not": {"required": ["a"]}}, strict=False)
    with pytest.raises(InvalidRequest):
        json_schema_grammar(["not", "an", "object"], strict=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="unknown name"):
        lark_grammar("start: missing_rule")

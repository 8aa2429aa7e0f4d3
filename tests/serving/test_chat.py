"""Chat and text completions through the official openai SDK against a real gunicorn server."""
from __future__ import annotations

import asyncio
import time

import openai

HI = [{"role": "user", "content": "Tell me about paths."}]


def chat(server, **kwargs):
    return server.client.chat.completions.create(model="tiny", messages=HI, **kwargs)


def test_stream_and_non_stream_give_the_same_text_at_temperature_0(server):
    whole = chat(server, temperature=0, max_tokens=24)
    chunks = list(chat(server, temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content == streamed and len(streamed) > 0 and "\x00" not in streamed
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 24 and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 24
    # the usage chunk comes last, after the chunk that carries finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])
    assert whole.system_fingerprint == "tiny@1"


def test_a_stop_sequence_cuts_the_text_even_across_tokens(server):
    full = chat(server, temperature=0, max_tokens=40).choices[0].message.content
    stop = full[10:16]  # six characters: usually spans a token boundary
    cut = chat(server, temperature=0, max_tokens=40, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(server, temperature=0, max_tokens=40,
                                                                       stop=stop, stream=True) if c.choices)
    assert streamed == full[: full.index(stop)]


def test_max_tokens_1_returns_one_token_with_length(server):
    reply = chat(server, max_tokens=1, temperature=0)  # greedy: an unseeded sample could be end-of-sequence
    assert reply.usage.completion_tokens == 1 and reply.choices[0].finish_reason == "length"
    assert chat(server, max_completion_tokens=1, temperature=0).usage.completion_tokens == 1


def test_seed_makes_sampling_repeatable(server):
    first = chat(server, temperature=1.0, seed=7, max_tokens=20).choices[0].message.content
    again = chat(server, temperature=1.0, seed=7, max_tokens=20).choices[0].message.content
    other = chat(server, temperature=1.0, seed=8, max_tokens=20).choices[0].message.content
    assert first == again and first != other


def test_n_choices_and_logprobs(server):
    reply = chat(server, n=2, temperature=1.0, seed=3, max_tokens=5, logprobs=True, top_logprobs=3)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens == 10
    content = reply.choices[0].logprobs.content
    assert len(content) == 5
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 3 for entry in content)
    assert all(entry.top_logprobs[0].logprob >= entry.logprob for entry in content)


def test_penalties_and_aliases_are_accepted(server):
    reply = server.client.chat.completions.create(model="default", messages=HI, max_tokens=5, presence_penalty=1.0,
                                                  frequency_penalty=0.5)
    assert reply.system_fingerprint == "tiny@1" and reply.model == "default"
    assert chat(server, max_tokens=2).model == "tiny"
    pinned = server.client.chat.completions.create(model="tiny@1", messages=HI, max_tokens=2)
    assert pinned.system_fingerprint == "tiny@1"


def test_text_completions_streamed_and_whole_with_logprobs(server):
    reply = server.client.completions.create(model="tiny", prompt="def main():", max_tokens=8, temperature=0,
                                             logprobs=2)
    assert reply.object == "text_completion" and reply.usage.completion_tokens == 8
    chunks = [c.choices[0] for c in server.client.completions.create(
        model="tiny", prompt="def main():", max_tokens=8, temperature=0, logprobs=2, stream=True) if c.choices]
    assert "".join(c.text for c in chunks) == reply.choices[0].text
    streamed_tokens = [token for c in chunks if c.logprobs for token in c.logprobs.tokens]
    assert streamed_tokens == reply.choices[0].logprobs.tokens and len(streamed_tokens) == 8


# ------------------------------------------------------------------ capacity (validation and error shapes are
# tested in-process: tests/serving/api/test_errors.py)


def test_a_full_queue_answers_429_with_retry_after(server):
    """The fixture's server decodes 8 sequences and queues 4 more; a 13th concurrent request is refused."""
    async def flood():
        client = server.async_client

        async def one():
            try:
                # the end-of-sequence tokens (<|endoftext|> 0, <|im_end|> 2) banned: a random model that happened to
                # end a stream early would free its place before the last request arrives
                return await client.chat.completions.create(model="tiny", messages=HI, max_tokens=1500, stream=True,
                                                            logit_bias={"0": -100, "2": -100})
            except openai.RateLimitError as exc:
                return exc

        outcomes = await asyncio.gather(*(one() for _ in range(20)))  # every stream stays open until all answered
        for outcome in outcomes:
            if not isinstance(outcome, Exception):
                await outcome.response.aclose()
        return outcomes

    outcomes = asyncio.run(flood())
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    if server.client.models.retrieve("tiny").model_extra["engine"] == "mlx":
        assert len(refused) == 8 and len(outcomes) - len(refused) == 12
    else:  # llama.cpp decodes the tiny model's 1,500 tokens in about a second: a stream may end, and free its place,
        assert 1 <= len(refused) <= 8  # before the last of the 20 requests arrives on a busy machine
    assert all(o.response.headers["retry-after"] == "1" and o.body["type"] == "rate_limit_error" for o in refused)
    # every client has gone, the queued ones included (their keep-alive comments notice): the model is idle again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (server.metric("factory_sequences_active", "tiny@1")
                                           or server.metric("factory_sequences_queued", "tiny@1")):
        time.sleep(0.1)
    assert server.metric("factory_sequences_active", "tiny@1") == server.metric("factory_sequences_queued",
                                                                                "tiny@1") == 0

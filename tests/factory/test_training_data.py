"""Fine-tuning data is checked line by line before anything trains on it."""
import json

import pytest

from factory.training_data import TrainingDataError, parse_training_jsonl, split_train_valid

CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


def problems(text):
    with pytest.raises(TrainingDataError) as caught:
        parse_training_jsonl(text, name="train.jsonl")
    return str(caught.value).splitlines()


def test_the_three_shapes_parse():
    assert parse_training_jsonl(CHAT + "\n\n" + CHAT).shape == "chat"
    assert parse_training_jsonl('{"prompt": "a", "completion": "b"}').shape == "completions"
    assert len(parse_training_jsonl('{"text": "a"}\n{"text": "b"}\n').examples) == 2


def test_every_bad_line_is_named():
    text = "\n".join([CHAT, "{not json", '{"messages": [{"role": "user", "content": "no answer"}]}',
                      '{"prompt": "a", "completion": "b"}', '{"other": 1}', '[1, 2]'])
    assert problems(text) == [
        "train.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        "train.jsonl:3: a chat example needs at least one assistant message to learn from",
        "train.jsonl:4: a completions example in a file of chat examples",
        "train.jsonl:5: expected 'messages', 'prompt' + 'completion', or 'text'",
        "train.jsonl:6: each line must be a JSON object",
    ]


def test_an_empty_file_is_refused():
    assert problems("\n\n") == ["train.jsonl:1: the file holds no examples"]


def test_the_split_is_deterministic_and_holds_out_at_least_one():
    data = parse_training_jsonl("\n".join(json.dumps({"text": str(i)}) for i in range(25)))
    train, valid = split_train_valid(data, seed=3)
    assert len(valid) == 2 and len(train) == 23 and (train, valid) == split_train_valid(data, seed=3)
    assert {r["text"] for r in train} | {r["text"] for r in valid} == {str(i) for i in range(25)}
    with pytest.raises(TrainingDataError, match="at least 2"):
        split_train_valid(parse_training_jsonl('{"text": "only"}'))

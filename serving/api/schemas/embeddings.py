"""Bodies of the embedding APIs: OpenAI's /v1/embeddings (request and response) and /v1/rerank in the shape
llama-server and Jina serve (query, documents, top_n -> results with index and relevance_score).

Every field is bounded by its type (a 400 before anything reaches a model); each model then applies its own limits
(how many inputs, how many tokens each, which `dimensions`), also as 400s.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from serving.api.schemas import Lenient
from serving.api.schemas.openai import MAX_TEXT, Name

MAX_INPUTS = 65536  # a bound for the body alone: a model's own `embedding.max_inputs` (2048 by default) is lower

Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0, lt=2**31)]], Field(min_length=1, max_length=MAX_TEXT)]
Count = Annotated[int, Field(ge=0)]
INPUT_SHAPE = "a string, a list of strings, an array of token ids, or a list of token id arrays"


def _token(value: Any) -> bool:
    return type(value) is int and value >= 0  # not a bool, not a float


def input_problem(value: Any) -> str | None:
    """`field: what is wrong` with an embeddings `input` of the wrong shape (pydantic's union errors would only say
    which member it tried last), or None."""
    if isinstance(value, str):
        return None if value else "input: an empty string cannot be embedded"
    if not isinstance(value, list) or not value:
        return f"input: must be {INPUT_SHAPE} (not empty)"
    if all(_token(item) for item in value):
        return None
    first = value[0]
    kind = str if isinstance(first, str) else list if isinstance(first, list) else None
    for index, item in enumerate(value):
        if kind is None:
            if type(item) is int or _token(item):
                return f"input[{index}]: token ids are non-negative integers"
            return f"input[{index}]: a {type(item).__name__} is not a string, a token id or a token array"
        if not isinstance(item, kind):
            return f"input[{index}]: every item of a list input is of one kind; the input must be {INPUT_SHAPE}"
        if not item:
            return f"input[{index}]: an empty {'string' if kind is str else 'token array'} cannot be embedded"
        if kind is list and not all(_token(token) for token in item):
            return f"input[{index}]: token ids are non-negative integers"
    return None


def documents_problem(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "documents: must be a list of strings (or {\"text\": ...} objects), not empty"
    for index, item in enumerate(value):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str) or not text:
            return f"documents[{index}]: must be a non-empty string or {{\"text\": \"...\"}}"
    return None


class EmbeddingRequest(Lenient):
    model: Name
    input: (Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)] | TokenIds
            | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)]) = Field(
        description="a string, a list of strings, a token array, or a list of token arrays (used as given: "
                    "include the special tokens the model's tokenizer adds, e.g. [CLS] ... [SEP])")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's float32 values, little-endian, base64-encoded")
    dimensions: Annotated[int, Field(ge=1)] | None = Field(
        None, description="a shorter vector, if the model allows it (`embedding.allowed_dimensions` in "
                          "/v1/models): its first values, renormalised")
    user: Annotated[str, Field(max_length=256)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _input_shape(cls, body: Any) -> Any:
        if isinstance(body, dict) and "input" in body and (problem := input_problem(body["input"])):
            raise ValueError(problem)
        return body

    @property
    def single(self) -> bool:
        """One input (a string or one token array) rather than a list of them."""
        return isinstance(self.input, str) or isinstance(self.input[0], int)

    def inputs(self) -> list[str] | list[list[int]]:
        return [self.input] if self.single else self.input


class Document(Lenient):
    text: Text


class RerankRequest(Lenient):
    model: Name
    query: Text
    documents: Annotated[list[Text | Document], Field(min_length=1, max_length=MAX_INPUTS)]
    top_n: Annotated[int, Field(ge=1)] | None = Field(None, description="only the best n results (all by default)")
    return_documents: bool = Field(False, description="include each document's text in its result")

    @model_validator(mode="before")
    @classmethod
    def _documents_shape(cls, body: Any) -> Any:
        if isinstance(body, dict) and "documents" in body and (problem := documents_problem(body["documents"])):
            raise ValueError(problem)
        return body

    def texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]


# ---------------------------------------------------------------- responses


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Embedding(Shape):
    object: Literal["embedding"]
    index: Count
    embedding: list[float] | str = Field(description="floats, or a base64 string (encoding_format: base64)")


class EmbeddingUsage(Shape):
    prompt_tokens: Count
    total_tokens: Count


class EmbeddingList(Shape):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class RerankDocument(Shape):
    text: str


class RerankResult(Shape):
    index: Count = Field(description="the document's position in the request")
    relevance_score: float = Field(description="cosine similarity of the query's and the document's vectors")
    document: RerankDocument | None = None


class RerankList(Shape):
    object: Literal["list"]
    model: str
    results: list[RerankResult] = Field(description="best first")
    usage: EmbeddingUsage

"""What a version's `serve` section asks of its engine beyond the model itself: the prefix cache, and speculative
decoding (prompt lookup; a draft model, whose artifact is chosen the way the served model's is)."""
from __future__ import annotations

import logging

from factory.registry import Version
from factory.spec import Serve
from serving.inference.local.engines.base import Engine, EngineOptions
from serving.inference.local.select import select_artifact

log = logging.getLogger("factory.serving")


def engine_options(serve: Serve, engine_class: type[Engine], draft: Version | None = None) -> EngineOptions:
    draft_path = None
    speculates = engine_class.name == "llamacpp"  # speculative decoding exists on llama.cpp only, so far
    if draft is not None:
        draft_class, artifact = select_artifact(draft, serve.engine)
        if speculates and draft_class is engine_class:
            draft_path = draft.artifact(artifact)
        else:  # said in the log, since a draft that silently does nothing would mislead
            log.warning("serve.draft %s is not used: speculative decoding needs the llama.cpp engine for both models "
                        "(this model runs on %s, the draft on %s)", draft.ref, engine_class.name, draft_class.name)
    if serve.prompt_lookup and not speculates:
        log.warning("serve.prompt_lookup is not used: prompt lookup runs on the llama.cpp engine only (this model "
                    "runs on %s)", engine_class.name)
    return EngineOptions(prefix_cache=serve.prefix_cache, draft=draft_path,
                         prompt_lookup=serve.prompt_lookup and speculates, draft_tokens=serve.draft_tokens)

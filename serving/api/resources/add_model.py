"""Adding a model from the web UI, the way the CLI does it:

- POST /v1/admin/specs: a spec's YAML, validated with the same `file:line: field: problem` messages as
  `factory spec check` (400 `invalid_spec`, one line per problem), written to the server's specs folder as
  `<name>.yaml` (replacing one of that name), then built (a run of the build deployment, serving/jobs/builds.py).
- POST /v1/admin/uploads: a `.gguf` file (multipart field `file`, or the raw body), streamed to ROOT/uploads, then
  the spec `factory serve FILE` writes for it (factory/implicit_spec.py) and its build: converted, validated and
  published like any spec. Bounded by `requests.max_upload_bytes`.
"""
from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path
from typing import Any

import yaml

from factory.implicit_spec import model_name, write_implicit_spec
from factory.spec import NAME_PATTERN, SpecError, parse_spec
from serving.api.errors import APIError, invalid
from serving.api.resources.builds import build_object
from serving.api.schemas import parse_query, read_json
from serving.api.schemas.ui import SpecRequest, UploadQuery
from serving.jobs.builds import PrefectBuilds

GGUF_MAGIC = b"GGUF"


class Specs:
    def __init__(self, builds: PrefectBuilds, specs_dir: Path):
        self.builds, self.specs_dir = builds, specs_dir

    async def on_post(self, req, resp):
        request: SpecRequest = await read_json(req, SpecRequest)
        path = await asyncio.to_thread(self._check_and_write, request.spec)
        await respond_written(resp, self.builds, path, self.specs_dir, request.build)

    def _check_and_write(self, text: str) -> Path:
        target = self.specs_dir / f"{_declared_name(text)}.yaml"
        try:
            spec = parse_spec(text, target)
        except SpecError as exc:
            raise APIError(400, "\n".join(exc.lines()), param="spec", code="invalid_spec") from None
        except yaml.YAMLError as exc:  # what the located loader does not turn into lines (unprintable characters)
            line = getattr(getattr(exc, "problem_mark", None), "line", 0) + 1
            raise APIError(400, f"{target}:{line}: not YAML: {exc}", param="spec", code="invalid_spec") from None
        target = self.specs_dir / f"{spec.name}.yaml"  # the validated name: a safe file name
        self.specs_dir.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        staged.write_text(text)
        os.replace(staged, target)  # a build reading the folder never sees half a spec
        return target


def _declared_name(text: str) -> str:
    """The name the spec gives itself, to name the file in its error messages (`spec` when it gives none)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return "spec"
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and re.match(NAME_PATTERN, name) else "spec"


class Uploads:
    def __init__(self, builds: PrefectBuilds, specs_dir: Path, uploads_dir: Path):
        self.builds, self.specs_dir, self.uploads_dir = builds, specs_dir, uploads_dir

    async def on_post(self, req, resp):
        name = parse_query(req, UploadQuery).name
        if name is not None and not re.match(NAME_PATTERN, name):
            raise invalid(f"name {name!r} must match {NAME_PATTERN}", param="name")
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        staged = self.uploads_dir / f".upload-{uuid.uuid4().hex}"
        try:
            filename = await _receive(req, staged)
            with open(staged, "rb") as f:
                if f.read(4) != GGUF_MAGIC:
                    raise invalid(f"{filename} is not a GGUF file", param="file", code="invalid_file")
            # named as `factory serve FILE` names it (the file is not there yet, so the suffix goes first)
            name = name or model_name(Path(filename.removesuffix(".gguf")))
            model_file = self.uploads_dir / f"{name}.gguf"
            os.replace(staged, model_file)
        except ValueError as exc:  # no name can be made from the file's name
            raise invalid(str(exc), param="name") from None
        finally:
            staged.unlink(missing_ok=True)
        path = await asyncio.to_thread(write_implicit_spec, model_file, self.specs_dir, name, {})
        await respond_written(resp, self.builds, path, self.specs_dir, True)


async def _receive(req, staged: Path) -> str:
    """Stream the upload to `staged`; returns the client's file name."""
    filename = None
    with open(staged, "wb") as out:
        if (req.content_type or "").startswith("multipart/form-data"):
            async for part in await req.get_media():
                if part.name == "file" and filename is None:
                    filename = part.filename or "upload.gguf"
                    async for chunk in part.stream:
                        out.write(chunk)
            if filename is None:
                raise invalid("missing the 'file' field", param="file")
        else:
            filename = "upload.gguf"
            async for chunk in req.stream:
                out.write(chunk)
    return Path(filename).name


async def respond_written(resp, builds: PrefectBuilds, path: Path, specs_dir: Path, build: bool) -> None:
    started: dict[str, Any] | None = build_object(await builds.start(str(path), str(specs_dir))) if build else None
    resp.media = {"object": "spec", "name": path.stem, "path": str(path), "build": started}

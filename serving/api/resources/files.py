"""/v1/files: upload (multipart, purpose `fine-tune`, JSONL checked line by line), list, retrieve, delete.

An upload is streamed to a staging file as it arrives (never held whole in memory), then checked, fsynced and filed
in a worker thread, so a file of hundreds of megabytes does not stall the other clients of this worker.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import falcon

from factory.files import FileStore, StoredFile
from factory.training_data import TrainingDataError, parse_training_jsonl
from serving.api.errors import APIError, invalid


def file_not_found(file_id: str) -> APIError:
    return APIError(404, f"No such file: {file_id}", param="file_id", code="file_not_found")


class Files:
    def __init__(self, store: FileStore):
        self.store = store

    async def on_post(self, req, resp):
        if not (req.content_type or "").startswith("multipart/form-data"):
            raise invalid("upload files as multipart/form-data with fields 'file' and 'purpose'", param="file")
        staged = self.store.staging_path()
        try:
            filename, purpose = None, None
            async for part in await req.get_media():
                if part.name == "file" and filename is None:
                    filename = part.filename or "upload.jsonl"
                    with open(staged, "wb") as out:
                        async for chunk in part.stream:
                            out.write(chunk)
                elif part.name == "purpose":
                    purpose = (await part.get_text() or "").strip()
            if filename is None:
                raise invalid("missing the 'file' field", param="file")
            if purpose != "fine-tune":
                raise invalid("purpose must be 'fine-tune' (the only purpose this server stores files for)",
                              param="purpose")
            resp.media = (await asyncio.to_thread(self._check_and_file, staged, filename, purpose)).openai()
        finally:
            staged.unlink(missing_ok=True)

    def _check_and_file(self, staged: Path, filename: str, purpose: str) -> StoredFile:
        try:
            parse_training_jsonl(staged.read_bytes().decode("utf-8"), name=filename)
        except UnicodeDecodeError:
            raise invalid(f"{filename} is not UTF-8 text", param="file") from None
        except TrainingDataError as exc:
            raise invalid(f"invalid training file: {exc}", param="file", code="invalid_file") from None
        return self.store.adopt(staged, filename, purpose)

    async def on_get(self, req, resp):
        files = await asyncio.to_thread(self.store.list)
        resp.media = {"object": "list", "data": [f.openai() for f in files], "has_more": False}

    async def on_get_one(self, req, resp, file_id: str):
        stored = await asyncio.to_thread(self.store.get, file_id)
        if stored is None:
            raise file_not_found(file_id)
        resp.media = stored.openai()

    async def on_delete_one(self, req, resp, file_id: str):
        if not await asyncio.to_thread(self.store.delete, file_id):
            raise file_not_found(file_id)
        resp.media = {"id": file_id, "object": "file", "deleted": True}
        resp.status = falcon.HTTP_200

"""/v1/files: upload (multipart, purpose `fine-tune`, JSONL checked line by line), list, retrieve, delete."""
from __future__ import annotations

import falcon

from factory.files import FileStore
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
        content, filename, purpose = None, None, None
        async for part in await req.get_media():
            if part.name == "file":
                filename, content = part.filename or "upload.jsonl", await part.get_data()
            elif part.name == "purpose":
                purpose = (await part.get_text()).strip()
        if content is None:
            raise invalid("missing the 'file' field", param="file")
        if purpose != "fine-tune":
            raise invalid("purpose must be 'fine-tune' (the only purpose this server stores files for)",
                          param="purpose")
        try:
            parse_training_jsonl(content.decode("utf-8"), name=filename)
        except UnicodeDecodeError:
            raise invalid(f"{filename} is not UTF-8 text", param="file") from None
        except TrainingDataError as exc:
            raise invalid(f"invalid training file: {exc}", param="file", code="invalid_file") from None
        resp.media = self.store.create(filename, purpose, content).openai()

    async def on_get(self, req, resp):
        resp.media = {"object": "list", "data": [f.openai() for f in self.store.list()], "has_more": False}

    async def on_get_one(self, req, resp, file_id: str):
        stored = self.store.get(file_id)
        if stored is None:
            raise file_not_found(file_id)
        resp.media = stored.openai()

    async def on_delete_one(self, req, resp, file_id: str):
        if not self.store.delete(file_id):
            raise file_not_found(file_id)
        resp.media = {"id": file_id, "object": "file", "deleted": True}
        resp.status = falcon.HTTP_200

"""Prefect tasks, one step per module: download, convert, validate, publish, fine-tune."""

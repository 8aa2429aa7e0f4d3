"""Prefect flows: orchestration only. Each flow composes one-step tasks from `tasks/`."""

"""Format libraries: how each artifact family is written, read back, run for validation and checked (GGUF, Core ML),
plus what validation shares across them (`checks`, the report vocabulary; `mlx_runtime`). No Prefect here: the
steps in `tasks/` call these libraries, and the server may use the light ones (`gguf.files`)."""

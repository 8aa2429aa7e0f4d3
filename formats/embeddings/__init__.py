"""Sentence embeddings: what an embedding model's artifacts share (`settings`: pooling and normalisation, written
into every artifact as `embedding.json`), the reference computation on the source weights (`reference`), the MLX
and llama.cpp runtimes that validation and the server both use (`runtime`, `mlx_bert`, `mlx_runtime`,
`llamacpp_runtime`), the MLX export (`export_mlx`; the GGUF one is `formats.gguf.bert`), and validation (`check`)."""

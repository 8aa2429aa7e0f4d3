"""GGUF: `export` (write), `importer` (a .gguf source as a Hugging Face folder), `check` (validation), `files`
(finding an artifact's file; stdlib only, safe for the server to import)."""

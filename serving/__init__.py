"""The Falcon OpenAI-compatible server that serves the registry and hot-reloads it."""

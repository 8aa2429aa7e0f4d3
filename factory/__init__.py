"""llm-factory's shared kernel: settings, the spec contract, the registry contract and the CLI.

Imports only the standard library, pydantic and PyYAML, so every other room can depend on it cheaply.
"""

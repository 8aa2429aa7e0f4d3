"""Core ML: `model` (the torch decoder that traces), `export` (the ML Program package), `program` (evaluates a saved
program without Core ML), `runtime` (what validation needs, through `program`), `check` (validation)."""

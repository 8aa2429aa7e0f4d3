"""Live events: one append-only log shared by every worker, and what feeds it."""

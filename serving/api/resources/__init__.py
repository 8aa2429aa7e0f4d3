"""Falcon resources, one module per API area."""

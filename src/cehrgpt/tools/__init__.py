"""Seed-compatible command-line tools (``python -m cehrgpt.tools.<name>``)."""

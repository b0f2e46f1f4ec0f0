"""Reversed dataset construction: scene → trajectory → answer → query (DESIGN §3)."""

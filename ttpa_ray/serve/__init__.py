"""Serving (DESIGN §7): an OpenAI-compatible `/v1/chat/completions` with tools on Ray Serve."""

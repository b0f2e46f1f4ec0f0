"""TPS (DESIGN §5): candidates at every tool-call turn, ESM scores, preference pairs."""

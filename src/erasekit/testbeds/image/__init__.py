"""The testbed: a procedural image world with exact labels, its judge, and a small SD pipeline trained on it."""

"""Measuring language-model unlearning: :mod:`.metrics` (answer probability, ROUGE, truth ratio,
forget quality) and :mod:`.evaluate` (the forget / retain / base / oracle report)."""

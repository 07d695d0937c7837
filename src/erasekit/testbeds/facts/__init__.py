"""Language-model unlearning (issue 13), starting with its testbed's world: :mod:`.factworld`."""

from erasekit.testbeds.facts.factworld import ATTRIBUTES, QA, Author, FactWorld

__all__ = ["ATTRIBUTES", "QA", "Author", "FactWorld"]

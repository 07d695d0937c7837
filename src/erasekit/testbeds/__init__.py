"""The testbeds erasekit measures itself on, one folder per kind: :mod:`.image` (the procedural
image world, its classifier, the trained pipeline and its quality gate) and :mod:`.facts` (the fact
world and its GPT-2). A testbed is a model like any other: it imports core and models, never
evaluation, methods or attacks."""

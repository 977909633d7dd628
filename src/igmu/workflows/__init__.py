"""Workflows: multi-stage jobs built on the engine's parts (methods, generation, evaluation,
report), such as `igmu demo`. Nothing below this layer imports from it."""

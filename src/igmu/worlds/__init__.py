"""Worlds: procedural image worlds with their own models and ground truth, as plugins.

A task whose YAML says ``world: <name>`` belongs to a world; the engine asks the world, through
the `World` interface, for what only it knows (its shipped models, its feature extractor, the
true image of a prompt). The engine never imports a world: worlds register in ``WORLDS`` through
the entry-point group ``igmu.worlds`` (igmu's MiniWorld is ``igmu.miniworld.plugin``).
"""

from igmu.worlds.base import WORLDS, World, get_world, register_world, world_of

__all__ = ["WORLDS", "World", "get_world", "register_world", "world_of"]

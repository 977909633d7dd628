"""CatIGMU: the task hierarchy as data, and the rules it implies."""

from igmu.taxonomy.tree import GUIDANCE_KEYS, Node, Taxonomy, load_taxonomy

__all__ = ["GUIDANCE_KEYS", "Node", "Taxonomy", "load_taxonomy"]

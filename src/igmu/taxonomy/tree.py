"""Load the CatIGMU hierarchy and resolve inherited guidance."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from igmu.core.errors import ConfigError
from igmu.core.files import read_text
from igmu.core.registry import did_you_mean
from igmu.core.yamlio import load_yaml

SCHEMA = "igmu.taxonomy/1"
REFERENCE_KINDS = ("stripped", "unrelated")
CONCEPT_KINDS = ("attribute", "entity")
# Guidance keys a node or a task may set, with their expected Python type.
GUIDANCE_KEYS: dict[str, type | tuple[type, ...]] = {
    "correct_output": str,
    "reference": str,
    "subject_retention": (str, type(None)),
    "detectors": list,
    # ``metrics`` replaces the list above it; ``extra_metrics`` appends to it (a node that adds
    # one metric to the defaults names only that one).
    "metrics": list,
    "extra_metrics": list,
    "sensitive_content": bool,
    "bootstrap_resamples": int,
    # aspect -> metric names in order of preference: the report's one headline per aspect.
    "headlines": dict,
}
ASPECT_NAMES = ("forgetting", "fidelity", "preservation", "alignment", "robustness")


def merge_guidance(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``; a mapping (``headlines``) is merged key by key, so a node can
    change one aspect's headline and inherit the others. ``extra_metrics`` is appended to the
    metrics (after an override's own ``metrics``, if it sets both); the result holds ``metrics``
    alone."""
    merged = dict(base)
    for key, value in override.items():
        if key == "extra_metrics":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    if "extra_metrics" in override:
        metrics = list(merged.get("metrics") or [])
        merged["metrics"] = metrics + [m for m in override["extra_metrics"] if m not in metrics]
    return merged


@dataclass(frozen=True)
class Node:
    id: str
    title: str
    description: str = ""
    kind: str | None = None
    guidance: dict[str, Any] = field(default_factory=dict)
    children: tuple[Node, ...] = ()
    parent: str | None = None


def validate_guidance(guidance: Any, where: str) -> dict[str, Any]:
    if guidance is None:
        return {}
    if not isinstance(guidance, dict):
        raise ConfigError(f"{where}: 'guidance' must be a mapping, got {type(guidance).__name__}")
    for key, value in guidance.items():
        if key not in GUIDANCE_KEYS:
            raise ConfigError(
                f"{where}: unknown guidance field {key!r}.{did_you_mean(key, list(GUIDANCE_KEYS))}"
            )
        if not isinstance(value, GUIDANCE_KEYS[key]):
            raise ConfigError(f"{where}: guidance field {key!r} has the wrong type")
    for key in ("metrics", "extra_metrics", "detectors"):
        if key in guidance and not all(isinstance(m, str) for m in guidance[key]):
            raise ConfigError(f"{where}: guidance field {key!r} must list names")
    for aspect, metrics in (guidance.get("headlines") or {}).items():
        if aspect not in ASPECT_NAMES:
            raise ConfigError(
                f"{where}: guidance field 'headlines.{aspect}' is not an aspect."
                f"{did_you_mean(str(aspect), list(ASPECT_NAMES))}"
            )
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            raise ConfigError(f"{where}: guidance field 'headlines.{aspect}' must list metrics")
    if "reference" in guidance and guidance["reference"] not in REFERENCE_KINDS:
        raise ConfigError(
            f"{where}: guidance field 'reference' must be one of {REFERENCE_KINDS}, "
            f"got {guidance['reference']!r}"
        )
    return dict(guidance)


class Taxonomy:
    def __init__(self, root: Node, version: int, source: str) -> None:
        self.root = root
        self.version = version
        self.source = source
        self._nodes: dict[str, Node] = {}
        self._index(root)

    def _index(self, node: Node) -> None:
        self._nodes[node.id] = node
        for child in node.children:
            self._index(child)

    def node(self, node_id: str) -> Node:
        if node_id not in self._nodes:
            raise ConfigError(
                f"Unknown CatIGMU node {node_id!r}.{did_you_mean(node_id, list(self._nodes))}"
            )
        return self._nodes[node_id]

    def path(self, node_id: str) -> list[Node]:
        """Nodes from the root down to ``node_id``."""
        chain = [self.node(node_id)]
        while chain[-1].parent is not None:
            chain.append(self._nodes[chain[-1].parent])
        return list(reversed(chain))

    def guidance(self, node_id: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for node in self.path(node_id):
            merged = merge_guidance(merged, node.guidance)
        return merged

    def kind(self, node_id: str) -> str:
        for node in reversed(self.path(node_id)):
            if node.kind:
                return node.kind
        raise ConfigError(f"CatIGMU node {node_id!r} has no concept kind above it")

    def leaves(self) -> list[Node]:
        return [n for n in self._nodes.values() if not n.children]


def _parse_node(raw: Any, where: str, parent: str | None) -> Node:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each node must be a mapping")
    for required in ("id", "title"):
        if not isinstance(raw.get(required), str):
            raise ConfigError(f"{where}: node field {required!r} is missing or not text")
    node_where = f"{where} node {raw['id']!r}"
    kind = raw.get("kind")
    if kind is not None and kind not in CONCEPT_KINDS:
        raise ConfigError(f"{node_where}: 'kind' must be one of {CONCEPT_KINDS}, got {kind!r}")
    children = tuple(_parse_node(child, where, raw["id"]) for child in raw.get("children") or [])
    return Node(
        id=raw["id"],
        title=raw["title"],
        description=raw.get("description", ""),
        kind=kind,
        guidance=validate_guidance(raw.get("guidance"), node_where),
        children=children,
        parent=parent,
    )


def parse_taxonomy(text: str, source: str) -> Taxonomy:
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise ConfigError(f"{source}: field 'schema' must be {SCHEMA!r}")
    if not isinstance(raw.get("version"), int):
        raise ConfigError(f"{source}: field 'version' must be an integer")
    return Taxonomy(_parse_node(raw, source, None), raw["version"], source)


@lru_cache(maxsize=4)
def load_taxonomy(path: str | None = None) -> Taxonomy:
    """Load the built-in hierarchy, or one from ``path``."""
    if path is not None:
        return parse_taxonomy(read_text(Path(path), "taxonomy file"), str(path))
    text = resources.files("igmu.taxonomy").joinpath("catigmu.yaml").read_text(encoding="utf-8")
    return parse_taxonomy(text, "igmu/taxonomy/catigmu.yaml")

"""Build each network once, lazily, from the models file (the only place names become models)."""

from __future__ import annotations

from typing import Any

from igmu.backbones.clip import ClipBackbone
from igmu.backbones.config import ModelsConfig, world_names
from igmu.core.errors import ConfigError
from igmu.detectors.base import build_detector
from igmu.worlds import get_world


class Providers:
    def __init__(
        self,
        models: ModelsConfig,
        task: Any,
        detectors: list[str] | None = None,
        device: str = "cpu",
    ) -> None:
        self.models = models
        self.task = task
        self.detector_names = (
            detectors if detectors is not None else list(task.guidance["detectors"])
        )
        self.device = device
        self._built: dict[str, Any] = {}
        self._shared: dict[str, Any] = {}

    def _once(self, key: str, build) -> Any:
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def concept_detectors(self) -> list[Any]:
        detectors = [
            self._once(f"detector:{n}", lambda n=n: self._detector(n)) for n in self.detector_names
        ]
        names = [d.name for d in detectors]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # their metrics would share one name
            raise ConfigError(
                f"--detectors: two detectors are both named {', '.join(map(repr, twice))} "
                f"({', '.join(self.detector_names)}); keep one"
            )
        return detectors

    def _detector(self, name: str) -> Any:
        if name == "clip_head":
            if not self.task.igmu_key:
                raise ConfigError(
                    f"task {self.task.name!r} has no 'igmu.key' naming its detector head; "
                    "pass --detectors clip_head:<head name>"
                )
            name = f"clip_head:{self.task.igmu_key}"
        if name.startswith("clip_head"):
            backbone = self.clip("clip_detector", "CLIP for detector heads")
            return build_detector(name, self.models, {"device": self.device, "backbone": backbone})
        return build_detector(name, self.models)

    def person(self) -> Any:
        return self._once("person", lambda: build_detector("person", self.models))

    def clip(self, field: str, role: str) -> ClipBackbone:
        """The CLIP a models-file field names, loaded once however many roles share it."""
        reference = self.models.get(field)
        key = f"clip:{reference}"
        if key not in self._shared:
            self._shared[key] = ClipBackbone.from_reference(reference, role, field, self.device)
        return self._shared[key]

    def clip_score(self) -> ClipBackbone:
        return self._once(
            "clip_score", lambda: self.clip("clip_score", "CLIP for CLIP score / CSDR")
        )

    def fid(self) -> Any:
        def build() -> Any:
            config = self.models.get("fid")
            if config.get("kind") in world_names():
                return self.world_features(config["kind"])
            if config.get("kind") == "clip":
                if not config.get("model"):
                    return self.clip("clip_detector", "FID feature extractor (CLIP)")
                return ClipBackbone.from_reference(
                    config["model"], "FID feature extractor (CLIP)", "fid.model", self.device
                )
            from igmu.backbones.inception import InceptionBackbone

            return InceptionBackbone(config.get("weights"), self.device)

        return self._once("fid", build)

    def lpips(self) -> Any:
        def build() -> Any:
            from igmu.backbones.lpips_net import LpipsBackbone

            config = self.models.get("lpips")
            if config.get("net") in world_names():
                return self.world_features(config["net"])
            return LpipsBackbone(
                config.get("net", "alex"), config.get("backbone_weights"), self.device
            )

        return self._once("lpips", build)

    def world_features(self, world: str) -> Any:
        """A world's own feature extractor (FID and LPIPS share one network, loaded once)."""
        key = f"world_features:{world}"
        if key not in self._shared:  # described as fid / lpips, not twice
            self._shared[key] = get_world(world).features(self.models)
        return self._shared[key]

    def describe(self) -> dict[str, Any]:
        described = {}
        for key, provider in sorted(self._built.items()):
            described[key] = provider.describe()
        return described

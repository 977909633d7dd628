"""Satisfy metric needs: each image read and decoded at most once, each network run once per
image (cached by content hash in the store), in batches, with a progress bar.

Every network call has the same shape: ``NETWORK_BATCH`` images (or texts, or image pairs), the
last call of a run padded with copies of its first item whose outputs are dropped. CPU kernels
give an item the same floats whatever else shares a call of one shape, but other floats at
another shape; so with a fixed shape a score does not depend on ``--batch-size`` (which now
only sets how many images are read and decoded at once) nor on which images another run cached
first (issue 20). The shape joins every stored feature's key (`provider_key`)."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from igmu.core.errors import ImageError
from igmu.core.images import decode_bytes
from igmu.core.records import ImageRecord
from igmu.core.timings import Timings
from igmu.metrics.base import (
    ImageNeed,
    PairNeed,
    TextNeed,
    in_fixed_calls,
    is_detector,
    provider_key,
)
from igmu.store import Store


def text_key(text: str) -> str:
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class Executor:
    """``skip_unreadable``: an image that cannot be read or decoded is recorded in
    ``unreadable`` (path -> reason) and left out, instead of stopping the run."""

    def __init__(
        self,
        store: Store,
        batch_size: int = 16,
        progress: bool = True,
        skip_unreadable: bool = False,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.progress = progress
        self.skip_unreadable = skip_unreadable
        self.unreadable: dict[str, str] = {}
        # seconds by kind: "score/read+hash", "score/decode", "score/<network fingerprint>"
        self.timings = Timings()
        self.sha: dict[str, str] = {}  # path -> sha256 of the file bytes
        self.embeddings: dict[tuple[str, str], np.ndarray] = {}
        self.raw: dict[tuple[str, str], dict] = {}
        self.pairs: dict[tuple[str, str, str], float] = {}
        self.decoded_images = 0
        self._paired_paths: set[str] = set()

    def run(self, needs: list[Any], records: list[ImageRecord]) -> None:
        per_image: dict[str, list[Any]] = defaultdict(list)  # path -> providers
        pair_needs: dict[str, list[PairNeed]] = defaultdict(list)  # ref path -> pair needs
        texts: dict[str, Any] = {}
        for need in needs:
            if isinstance(need, ImageNeed):
                if need.provider not in per_image[need.record.path]:
                    per_image[need.record.path].append(need.provider)
            elif isinstance(need, PairNeed):
                pair_needs[need.reference.path].append(need)
            elif isinstance(need, TextNeed):
                texts.setdefault(provider_key(need.provider) + "\0" + need.text, need)
        self._paired_paths = set(pair_needs) | {
            n.record.path for ns in pair_needs.values() for n in ns
        }
        self._run_texts(list(texts.values()))
        groups = self._groups(records, per_image, pair_needs)
        total = sum(len(g) for g in groups)
        bar = tqdm(total=total, desc="scoring images", unit="img", disable=not self.progress)
        batch: list[str] = []
        for group in groups:
            batch.extend(group)
            if len(batch) >= self.batch_size:
                self._run_batch(batch, per_image, pair_needs)
                bar.update(len(batch))
                batch = []
        if batch:
            self._run_batch(batch, per_image, pair_needs)
            bar.update(len(batch))
        bar.close()

    @staticmethod
    def _groups(records, per_image, pair_needs) -> list[list[str]]:
        """A pair reference and its partners form one group, so both sides are in one batch."""
        grouped: set[str] = set()
        groups = []
        for ref_path, needs in sorted(pair_needs.items()):
            group = [ref_path] + sorted({n.record.path for n in needs} - {ref_path})
            group = [p for p in group if p not in grouped]
            grouped.update(group)
            groups.append(group)
        for path in sorted((set(per_image) | {r.path for r in records}) - grouped):
            groups.append([path])
        return [g for g in groups if g]

    def _run_texts(self, needs: list[TextNeed]) -> None:
        by_provider: dict[str, tuple[Any, list[str]]] = {}
        for need in needs:
            by_provider.setdefault(provider_key(need.provider), (need.provider, []))[1].append(
                need.text
            )
        for fp, (provider, all_texts) in by_provider.items():
            keys = {text_key(t): t for t in all_texts}
            cached = self.store.get_features(fp, keys)
            missing = [t for k, t in keys.items() if k not in cached]
            for start in range(0, len(missing), 64):
                chunk = missing[start : start + 64]
                with self.timings.stage(f"score/{_label(provider)} (text)"):
                    vectors = in_fixed_calls(provider.text_embeddings, chunk)
                fresh = {text_key(t): v for t, v in zip(chunk, vectors, strict=True)}
                self.store.put_features(fp, fresh)
                cached.update(fresh)
            for key, vector in cached.items():
                self.embeddings[(fp, key)] = vector

    def _read_sha(self, path: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{path}: file does not exist") from None
        except OSError as exc:
            raise ImageError(f"{path}: cannot read file: {exc}") from None
        if not data:
            raise ImageError(f"{path}: file is empty (0 bytes)")
        self.sha[path] = hashlib.sha256(data).hexdigest()
        return data

    def _unreadable(self, path: str, exc: ImageError) -> None:
        if not self.skip_unreadable:
            raise exc
        self.unreadable[path] = str(exc)

    def _run_batch(self, paths: list[str], per_image, pair_needs) -> None:
        data: dict[str, bytes] = {}
        with self.timings.stage("score/read+hash"):
            for path in paths:
                try:
                    data[path] = self._read_sha(path)
                except ImageError as exc:
                    self._unreadable(path, exc)
        paths = [p for p in paths if p in data]
        pixels: dict[str, np.ndarray | None] = {}

        def decoded(path: str) -> np.ndarray | None:
            """The pixels, or None for an image recorded as unreadable."""
            if path not in pixels:
                try:
                    with self.timings.stage("score/decode"):
                        pixels[path] = decode_bytes(data[path], path).pixels
                    self.decoded_images += 1
                except ImageError as exc:
                    self._unreadable(path, exc)
                    pixels[path] = None
            return pixels[path]

        # An image whose outputs are all cached decoded fine before (same bytes); one that no
        # metric needs is still decoded, so a bad file fails loudly rather than vanishing.
        for path in paths:
            if not per_image.get(path) and path not in self._paired_paths:
                decoded(path)
        providers: dict[str, Any] = {}
        wanted: dict[str, list[str]] = defaultdict(list)
        for path in paths:
            for provider in per_image.get(path, []):
                key = provider_key(provider)
                providers[key] = provider
                wanted[key].append(path)
        for key, provider in providers.items():
            shas = {self.sha[p]: p for p in wanted[key]}
            if is_detector(provider):
                cached = self.store.get_detections(key, shas)
            else:
                cached = self.store.get_features(key, shas)
            missing = [p for s, p in shas.items() if s not in cached]
            missing = [p for p in missing if decoded(p) is not None]
            if missing:
                images = [decoded(p) for p in missing]
                started = time.perf_counter()
                if is_detector(provider):
                    outputs = in_fixed_calls(provider.analyse, images)
                    fresh = {self.sha[p]: o for p, o in zip(missing, outputs, strict=True)}
                    self.store.put_detections(key, fresh)
                else:
                    vectors = in_fixed_calls(provider.image_embeddings, images)
                    fresh = {self.sha[p]: v for p, v in zip(missing, vectors, strict=True)}
                    self.store.put_features(key, fresh)
                self.timings.add(f"score/{_label(provider)}", time.perf_counter() - started)
                cached.update(fresh)
            for sha, value in cached.items():
                target = self.raw if is_detector(provider) else self.embeddings
                target[(key, sha)] = value if is_detector(provider) else np.asarray(value)
        self._run_pairs(paths, pair_needs, decoded)

    def _run_pairs(self, paths: list[str], pair_needs, decoded) -> None:
        todo: dict[str, tuple[Any, list[PairNeed]]] = {}
        for path in paths:
            for need in pair_needs.get(path, []):
                todo.setdefault(provider_key(need.provider), (need.provider, []))[1].append(need)
        for fp, (provider, needs) in todo.items():
            needs = [
                n for n in needs if n.reference.path in self.sha and n.record.path in self.sha
            ]
            keys = {(self.sha[n.reference.path], self.sha[n.record.path]): n for n in needs}
            cached = self.store.get_pair_scores(fp, keys)
            missing = [
                n for k, n in keys.items()
                if k not in cached
                and decoded(n.reference.path) is not None
                and decoded(n.record.path) is not None
            ]
            if missing:
                firsts, seconds = [], []
                for need in missing:
                    ref, own = decoded(need.reference.path), decoded(need.record.path)
                    if own.shape != ref.shape:
                        own = _resize(own, ref.shape)
                    firsts.append(ref)
                    seconds.append(own)
                fresh: dict[tuple[str, str], float] = {}
                by_shape: dict[tuple, list[int]] = defaultdict(list)
                for i, image in enumerate(firsts):
                    by_shape[image.shape].append(i)
                for indices in by_shape.values():
                    started = time.perf_counter()
                    values = in_fixed_calls(
                        provider.distances, [firsts[i] for i in indices],
                        [seconds[i] for i in indices],
                    )
                    self.timings.add(f"score/{_label(provider)}", time.perf_counter() - started)
                    for i, value in zip(indices, values, strict=True):
                        need = missing[i]
                        fresh[(self.sha[need.reference.path], self.sha[need.record.path])] = float(
                            value
                        )
                self.store.put_pair_scores(fp, fresh)
                cached.update(fresh)
            for (a, b), value in cached.items():
                self.pairs[(fp, a, b)] = value


def _label(provider: Any) -> str:
    """A network's name in the timings: its detector name or its role."""
    name = getattr(provider, "name", None) or getattr(provider, "role", None)
    return str(name or type(provider).__name__)


def _resize(image: np.ndarray, shape: tuple) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BICUBIC))

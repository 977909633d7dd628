"""`igmu generate --backend ray`: the engine's batches on Ray workers, into the same cache.

One actor per GPU (``--device cuda``) or per CPU worker loads the method's pipeline with the same
factory the local backend uses, so its generator fingerprint, and so every cache key, is the one a
local run computes (checked: all workers must report the same fingerprint). The driver keeps the
batch plan (`engine.batch_plan`), hands each batch with a missing image to an idle worker, and
writes the PNG bytes the worker returns into the content-addressed cache itself (atomically, and
only under keys not yet present), so nothing is written twice and a worker that dies mid-batch
leaves nothing behind: its batch goes back in the queue, a fresh worker replaces it, and the
images are the ones any worker would make. A batch whose workers keep dying fails the run after
`MAX_TRIES` attempts.

Workers see the torch thread count ``worker_threads``; pixels can depend on thread counts on some
CPUs, so compare a Ray run with a local run at the same thread count.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

from igmu.core.errors import ConfigError, MissingExtraError
from igmu.generation.base import GenerationSettings
from igmu.generation.cache import ImageCache, encode_png

MAX_TRIES = 3
LOCAL_OBJECT_STORE = 256 * 1024 * 1024


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingExtraError("igmu generate --backend ray", "ray", "ray") from None
    return ray


class GenerationWorker:
    """A Ray actor body: one loaded generator, batches in, PNG bytes out."""

    def __init__(self, factory: Any, source: Any, field: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.generator = factory(source, field)

    def identity(self) -> tuple[str, bool, int]:
        return (self.generator.fingerprint, bool(getattr(self.generator, "batch_invariant",
                                                         False)), os.getpid())

    def generate(self, prompts: list[str], seeds: list[int], settings: dict[str, Any]
                 ) -> list[bytes]:
        images = self.generator.generate(prompts, seeds, GenerationSettings(**settings))
        return [encode_png(image) for image in images]


class RemoteGenerator:
    """What the engine needs of a generator whose copies run on Ray workers."""

    def __init__(self, fingerprint: str, batch_invariant: bool) -> None:
        self.fingerprint = fingerprint
        self.batch_invariant = batch_invariant


class RayRunner:
    """Workers for one model; `run` executes the engine's batch plan on them."""

    def __init__(self, factory: Any, source: Any, field: str, options: Any) -> None:
        ray = import_ray()
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            self._init(options)
        cuda = str(options.device).startswith("cuda")
        resources = ray.cluster_resources()
        if cuda:
            count = options.workers or int(resources.get("GPU", 0))
            if count < 1:
                raise ConfigError("--backend ray --device cuda: the Ray cluster has no GPU")
            self.actor_options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        else:
            threads = options.worker_threads
            count = options.workers or max(1, int(resources.get("CPU", 1)) // threads)
            self.actor_options = {"num_cpus": threads}
        self.actor_options["max_restarts"] = 0
        self.body = ray.remote(GenerationWorker)
        self.spawn_args = (factory, source, field, options.worker_threads)
        self.workers: list[Any] = []
        self.identity: tuple[str, bool] | None = None
        try:
            for worker in [self._spawn_unchecked() for _ in range(count)]:
                self._check(worker)
        except Exception:
            self.close()
            raise
        self.generator = RemoteGenerator(*self.identity)  # type: ignore[misc]

    def _init(self, options: Any) -> None:
        import igmu

        package_root = str(Path(igmu.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        env = {"PYTHONPATH": path, "OMP_NUM_THREADS": str(options.worker_threads),
               "TOKENIZERS_PARALLELISM": "false"}
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False, "runtime_env": {"env_vars": env}}
        if options.ray_address:
            self.ray.init(address=options.ray_address, **kwargs)
        else:
            cpus = (options.workers or os.cpu_count() or 1) * options.worker_threads
            self.ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE, **kwargs)
        self.started = True

    def _spawn_unchecked(self) -> Any:
        worker = self.body.options(**self.actor_options).remote(*self.spawn_args)
        self.workers.append(worker)
        return worker

    def _check(self, worker: Any) -> None:
        fingerprint, invariant, _ = self.ray.get(worker.identity.remote())
        if self.identity is None:
            self.identity = (fingerprint, invariant)
        elif self.identity != (fingerprint, invariant):
            raise RuntimeError(
                "Ray workers loaded different generators (fingerprints "
                f"{self.identity[0][:12]} and {fingerprint[:12]}): different library versions or "
                "model files on the cluster's machines?"
            )

    def _replace(self, dead: Any) -> Any:
        if dead in self.workers:
            self.workers.remove(dead)
        worker = self._spawn_unchecked()
        self._check(worker)
        return worker

    def run(self, jobs: list[Any], batches: list[list[int]], keys: list[str],
            settings: GenerationSettings, cache: ImageCache, on_done: Any) -> dict[int, str]:
        """Generate every batch with a missing image on the workers; {job index: PNG sha256}
        of the images written (see `engine.run_batches_locally`)."""
        from ray.exceptions import RayActorError

        invariant = bool(self.generator.batch_invariant)
        pending: deque[tuple[list[int], list[int], int]] = deque()
        for batch in batches:
            missing = [i for i in batch if not cache.has(keys[i])]
            if missing:
                pending.append((batch, missing, 0))
            else:
                on_done(len(batch), 0)
        idle = list(self.workers)
        running: dict[Any, tuple[Any, list[int], list[int], int]] = {}
        shas: dict[int, str] = {}
        plain = settings.as_dict()
        while pending or running:
            while pending and idle:
                batch, missing, tries = pending.popleft()
                worker = idle.pop()
                todo = missing if invariant else batch
                ref = worker.generate.remote([jobs[i].prompt for i in todo],
                                             [jobs[i].seed for i in todo], plain)
                running[ref] = (worker, batch, missing, tries)
            ready, _ = self.ray.wait(list(running), num_returns=1)
            worker, batch, missing, tries = running.pop(ready[0])
            try:
                pngs = self.ray.get(ready[0])
            except RayActorError:
                if tries + 1 >= MAX_TRIES:
                    raise RuntimeError(
                        f"Ray workers died {MAX_TRIES} times on one batch "
                        f"({jobs[batch[0]].prompt!r}, ...); giving up"
                    ) from None
                print(f"igmu: a Ray worker died; its batch of {len(batch)} images is retried",
                      file=sys.stderr)
                pending.appendleft((batch, missing, tries + 1))
                idle.append(self._replace(worker))
                continue
            idle.append(worker)
            todo = missing if invariant else batch
            for i, data in zip(todo, pngs, strict=True):
                if i in missing:
                    shas[i] = cache.put_png(keys[i], data)
            on_done(len(batch), len(missing))
        return shas

    def close(self) -> None:
        for worker in self.workers:
            try:
                self.ray.kill(worker)
            except Exception:  # already dead
                pass
        self.workers = []
        if self.started:
            self.ray.shutdown()
            self.started = False

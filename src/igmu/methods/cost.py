"""What an unlearning run cost, for the method card and the ``efficiency`` aspect.

Recorded around a method's ``edit``: wall and CPU seconds (the process's, all threads), peak
memory (resident set sampled every 20 ms during the edit on CPU; the allocator's peak on CUDA),
the parameters changed and added (by a digest of every tensor of the UNet and text encoders
before and after, so a count is exact per tensor: a tensor counts whole when any value in it
changed), the bytes the output folder holds, the device and the thread count.

The digests also check what a method says of itself: a changed tensor that the method's
``edited_parameters`` do not list is an error (a method must not touch what it does not claim).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
SAMPLE_SECONDS = 0.02


def parameter_digests(pipeline: Any) -> dict[str, tuple[str, int]]:
    """``component.name`` -> (digest of the tensor's bytes, element count), for every tensor of
    the pipeline's UNet and text encoders (buffers included)."""
    import torch

    digests = {}
    for component in COMPONENTS:
        module = getattr(pipeline, component, None)
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            data = tensor.detach().to("cpu").contiguous()
            raw = data.view(torch.uint8) if data.dtype != torch.bool else data.to(torch.uint8)
            digest = hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()
            digests[f"{component}.{name}"] = (digest, int(tensor.numel()))
    return digests


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _PeakSampler:
    """The largest resident set seen while running (CPU)."""

    def __init__(self) -> None:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


@dataclass
class CostMeter:
    """Measure one edit: ``with meter.measure(pipeline, device): edit(...)``, then
    ``meter.finish(pipeline, declared, folder)``."""

    device: str = "cpu"
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    memory_kind: str = "resident set (process, sampled)"
    before: dict[str, tuple[str, int]] = field(default_factory=dict)

    def start(self, pipeline: Any) -> None:
        self.before = parameter_digests(pipeline) if pipeline is not None else {}

    def measure(self, run: Any) -> Any:
        """Run ``run()`` under the clocks and the memory sampler; return its result."""
        import torch

        cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        wall, cpu = time.perf_counter(), time.process_time()
        with _PeakSampler() as sampler:
            result = run()
        self.wall_seconds = time.perf_counter() - wall
        self.cpu_seconds = time.process_time() - cpu
        if cuda:
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
            self.memory_kind = "CUDA allocator peak"
        else:
            self.peak_memory_bytes = int(sampler.peak)
        return result

    def changes(self, pipeline: Any, declared: list[str]) -> dict[str, Any]:
        """Parameters changed and added, checked against the method's ``edited_parameters``
        (names without a component prefix are the UNet's)."""
        if pipeline is None:
            return {"changed_tensors": 0, "changed_parameters": 0, "added_parameters": 0,
                    "total_parameters": 0, "changed_share": 0.0}
        after = parameter_digests(pipeline)
        changed = [n for n, (d, _) in after.items() if n in self.before and self.before[n][0] != d]
        added = [n for n in after if n not in self.before]
        claimed = {n if n.split(".", 1)[0] in COMPONENTS else f"unet.{n}" for n in declared}
        undeclared = sorted(n for n in changed if n not in claimed)
        if undeclared:
            shown = ", ".join(undeclared[:5]) + (" ..." if len(undeclared) > 5 else "")
            raise RuntimeError(
                f"the method changed {len(undeclared)} tensor(s) its edited_parameters do not "
                f"list: {shown} (a bug of the method)"
            )
        total = sum(count for _, count in self.before.values())
        changed_count = sum(after[n][1] for n in changed)
        return {
            "changed_tensors": len(changed),
            "changed_parameters": changed_count,
            "added_tensors": len(added),
            "added_parameters": sum(after[n][1] for n in added),
            "total_parameters": total,
            "changed_share": changed_count / total if total else 0.0,
        }

    def card(self, changes: dict[str, Any], folder: Path, threads: int) -> dict[str, Any]:
        written = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
        return {
            "wall_seconds": round(self.wall_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_kind": self.memory_kind,
            **changes,
            "bytes_written": written,
            "device": self.device,
            "threads": threads,
        }

"""Pair images by key (prompt set, class, prompt, seed), never by file order."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from igmu.core.constants import is_attack_set
from igmu.core.errors import PairingError
from igmu.core.records import ImageKey, ImageRecord
from igmu.tasks.model import Task

MAX_LISTED = 12


@dataclass
class PairedSet:
    """Every method's images, keyed, checked for completeness against the reference method."""

    reference_method: str
    methods: list[str]
    images: dict[str, dict[str, dict[ImageKey, ImageRecord]]]  # method -> set -> key -> record
    left_out: list[str] = field(default_factory=list)

    def records(self, method: str, prompt_set: str) -> list[ImageRecord]:
        by_key = self.images.get(method, {}).get(prompt_set, {})
        return [by_key[k] for k in sorted(by_key)]

    def has(self, method: str, prompt_set: str) -> bool:
        return bool(self.images.get(method, {}).get(prompt_set))

    def drop(self, paths: dict[str, str]) -> None:
        """Leave out the images at ``paths`` (path -> reason), recording each in ``left_out``;
        metrics then score what remains (pairs lose the dropped side)."""
        for method in self.methods:
            for by_key in self.images[method].values():
                for key in [k for k, rec in by_key.items() if rec.path in paths]:
                    rec = by_key.pop(key)
                    self.left_out.append(f"{method}:{key} unreadable, skipped: {paths[rec.path]}")

    def all_records(self) -> list[ImageRecord]:
        return [
            rec
            for method in self.methods
            for by_key in self.images[method].values()
            for rec in by_key.values()
        ]


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")


def pair_images(
    records: list[ImageRecord], task: Task, reference_method: str, allow_missing: bool
) -> PairedSet:
    images: dict[str, dict[str, dict[ImageKey, ImageRecord]]] = {}
    for rec in records:
        by_key = images.setdefault(rec.method, {}).setdefault(rec.prompt_set, {})
        if rec.key in by_key:
            raise PairingError(
                f"two images for method {rec.method!r} and key {rec.key}: "
                f"{by_key[rec.key].path} and {rec.path}"
            )
        by_key[rec.key] = rec
    if reference_method not in images:
        raise PairingError(
            f"no images for the reference method {reference_method!r} (the original model); "
            f"methods found: {', '.join(sorted(images))}. Use --reference-method to name it."
        )
    methods = [reference_method] + sorted(m for m in images if m != reference_method)
    reference = images[reference_method]
    problems: list[str] = []
    left_out: list[str] = []

    # Reference-only sets (stripped) must cover every forget key for attribute tasks.
    if task.reference == "stripped":
        forget_keys = {replace(k, prompt_set="stripped") for k in reference.get("forget", {})}
        for method in methods:
            forget_keys |= {
                replace(k, prompt_set="stripped") for k in images[method].get("forget", {})
            }
        have = set(reference.get("stripped", {}))
        missing = sorted(forget_keys - have)
        if missing and not reference.get("stripped"):
            left_out.append(
                f"fidelity and alignment of {task.name!r}: no {reference_method} images on "
                "stripped prompts, so nothing to compare forget images with"
            )
            problems.append(
                f"task {task.name!r} is attribute-like: its reference is {reference_method} on "
                f"the concept-stripped prompts (folder remove_word/{reference_method}/), "
                f"but there are no such images"
            )
        elif missing:
            problems.append(
                f"{reference_method} stripped-prompt images missing for {len(missing)} key(s): "
                f"{_listing([str(k) for k in missing])}"
            )
            if allow_missing:
                for method in methods:
                    for key in missing:
                        forget_key = replace(key, prompt_set="forget")
                        if images[method].get("forget", {}).pop(forget_key, None):
                            left_out.append(f"{method}:{forget_key} (no stripped reference)")

    for method in methods[1:]:
        for set_name in sorted(set(reference) | set(images[method])):
            # Attack images are each method's own adversarial prompts: nothing to pair.
            if set_name == "stripped" or is_attack_set(set_name):
                continue
            ref_keys = set(reference.get(set_name, {}))
            own_keys = set(images[method].get(set_name, {}))
            missing, extra = sorted(ref_keys - own_keys), sorted(own_keys - ref_keys)
            if missing:
                problems.append(
                    f"method {method!r} lacks {len(missing)} {set_name} image(s) that "
                    f"{reference_method} has: {_listing([str(k) for k in missing])}"
                )
            if extra:
                problems.append(
                    f"method {method!r} has {len(extra)} {set_name} image(s) with no "
                    f"{reference_method} counterpart: {_listing([str(k) for k in extra])}"
                )
            if allow_missing:
                for key in missing:
                    reference_rec = reference[set_name][key]
                    left_out.append(f"{method}:{key} missing ({reference_rec.path} unmatched)")
                for key in extra:
                    left_out.append(
                        f"{method}:{key} extra ({images[method][set_name].pop(key).path})"
                    )
        if method in images and "stripped" in images[method] and method != reference_method:
            problems.append(
                f"method {method!r} has stripped-prompt images; only the reference method "
                f"{reference_method!r} is expected there"
            )
    if problems and not allow_missing:
        raise PairingError(
            "images do not pair up by key:\n  - "
            + "\n  - ".join(problems)
            + "\n(pass --allow-missing to score the intersection and record what was left out)"
        )
    # With allow_missing, drop reference images that no other method can be compared against.
    return PairedSet(reference_method, methods, images, left_out)

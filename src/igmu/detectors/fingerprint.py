"""A detector's fingerprint: what its verdicts depend on (network, weights and the settings its
verdict reads), so that an audit of it applies exactly where the same verdicts are made.

Change the threshold and the fingerprint (and the audit that applies) changes; move the weights
to another folder and it does not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# describe() keys that change a verdict (the rest is provenance: paths, versions, prose).
VERDICT_SETTINGS = ("threshold", "labels", "concept_index", "head", "target")


def detector_settings_of(detector: Any) -> dict[str, Any]:
    described = detector.describe()
    return {k: described[k] for k in VERDICT_SETTINGS if k in described}


def detector_fingerprint(detector: Any) -> str:
    """sha256 of the detector kind, its model fingerprint and its verdict settings."""
    payload = {
        "kind": detector.name.partition(":")[0],
        "model": detector.model_fingerprint,
        "settings": detector_settings_of(detector),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

"""Audits in the workspace store: an ``audits`` table in the same SQLite file as the runs.

A detector's audit is found by the detector's *fingerprint*: its model fingerprint (network and
weights) plus the settings its verdict depends on (threshold, counted labels, concept index,
target). Change the threshold and the old audit no longer applies; move the weights to another
folder and it still does.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

# describe() keys that change a verdict (the rest is provenance: paths, versions, prose).
VERDICT_SETTINGS = ("threshold", "labels", "concept_index", "head", "target")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audits (
    audit_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, detector TEXT NOT NULL,
    data_sha256 TEXT NOT NULL, split TEXT NOT NULL, created_at REAL NOT NULL,
    audit_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audits_by_fingerprint ON audits (fingerprint, created_at);
"""


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


def _connect(store_path: Path) -> sqlite3.Connection:
    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(store_path), timeout=60)
    db.executescript(SCHEMA)
    return db


def save_audit(store_path: Path, audit: dict[str, Any]) -> None:
    db = _connect(store_path)
    try:
        with db:
            db.execute(
                "INSERT OR REPLACE INTO audits VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    audit["audit_id"],
                    audit["detector"]["fingerprint"],
                    audit["detector"]["name"],
                    audit["data"]["manifest_sha256"],
                    audit["data"]["split"],
                    time.time(),
                    json.dumps(audit, sort_keys=True),
                ),
            )
    finally:
        db.close()


def find_audits(store_path: Path, fingerprint: str) -> list[dict[str, Any]]:
    """Every stored audit of a detector fingerprint, newest first; [] without a store."""
    if not Path(store_path).is_file():
        return []
    db = _connect(store_path)
    try:
        rows = db.execute(
            "SELECT audit_json FROM audits WHERE fingerprint=? ORDER BY created_at DESC",
            (fingerprint,),
        ).fetchall()
    finally:
        db.close()
    return [json.loads(r[0]) for r in rows]

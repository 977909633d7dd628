"""Judge audits in the workspace store (its ``audits`` table), found by the detector's
fingerprint (`igmu.detectors.fingerprint`): an audit applies to exactly the verdicts it
measured."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from igmu.store.sqlite import Store


def save_audit(store_path: Path, audit: dict[str, Any]) -> None:
    store = Store(store_path)
    try:
        with store.db:
            store.db.execute(
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
        store.close()


def find_audits(store_path: Path, fingerprint: str) -> list[dict[str, Any]]:
    """Every stored audit of a detector fingerprint, newest first; [] without a store."""
    if not Path(store_path).is_file():
        return []
    store = Store(store_path)
    try:
        rows = store.db.execute(
            "SELECT audit_json FROM audits WHERE fingerprint=? ORDER BY created_at DESC",
            (fingerprint,),
        ).fetchall()
    finally:
        store.close()
    return [json.loads(r[0]) for r in rows]

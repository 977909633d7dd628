"""One SQLite file per workspace. Caches commit per batch; a run's results commit at once."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.core.records import (
    AGGREGATE_COLUMNS,
    AGGREGATE_KEY,
    COMPARISON_COLUMNS,
    COMPARISON_KEY,
    SAMPLE_COLUMNS,
    SAMPLE_KEY,
    Aggregate,
    Comparison,
    Sample,
    insert_sql,
    names,
    select_sql,
    table_sql,
)

SCHEMA_VERSION = 3
# How a store of an older schema becomes the current one (caches stay valid). Version 3 adds
# the audits table (older igmu created it outside the schema; the same definition) and the
# comparisons of each run.
MIGRATIONS = {
    1: "ALTER TABLE aggregates ADD COLUMN prompts INTEGER NOT NULL DEFAULT 0",
    2: "SELECT 1",  # the new tables are created by SCHEMA below
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, task TEXT NOT NULL, task_version INTEGER NOT NULL,
    run_dir TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL,
    spec_json TEXT NOT NULL, fingerprints_json TEXT NOT NULL, left_out_json TEXT NOT NULL
);
{records}
CREATE TABLE IF NOT EXISTS features (
    backbone TEXT NOT NULL, sha256 TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (backbone, sha256)
);
CREATE TABLE IF NOT EXISTS detections (
    detector TEXT NOT NULL, sha256 TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (detector, sha256)
);
CREATE TABLE IF NOT EXISTS requests (
    request_key TEXT PRIMARY KEY, run_id TEXT NOT NULL, extra_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pair_scores (
    metric TEXT NOT NULL, sha_a TEXT NOT NULL, sha_b TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (metric, sha_a, sha_b)
);
CREATE TABLE IF NOT EXISTS audits (
    audit_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, detector TEXT NOT NULL,
    data_sha256 TEXT NOT NULL, split TEXT NOT NULL, created_at REAL NOT NULL,
    audit_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audits_by_fingerprint ON audits (fingerprint, created_at);
""".replace("{records}", "\n".join((
    table_sql("samples", SAMPLE_COLUMNS, SAMPLE_KEY),
    table_sql("aggregates", AGGREGATE_COLUMNS, AGGREGATE_KEY),
    table_sql("comparisons", COMPARISON_COLUMNS, COMPARISON_KEY),
)))


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=60)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._check_schema()
            self.db.executescript(SCHEMA)
            self.db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self.db.commit()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise ConfigError(
                f"store {self.path}: not a usable igmu SQLite store ({exc})"
            ) from None
        except ConfigError:
            self.db.close()
            raise

    def _check_schema(self) -> None:
        """A store written by another schema version is refused, never silently mixed."""
        has_meta = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row is not None and row[0].isdigit() else None
        while version is not None and version < SCHEMA_VERSION and version in MIGRATIONS:
            with self.db:
                self.db.execute(MIGRATIONS[version])
                version += 1
                self.db.execute(
                    "UPDATE meta SET value=? WHERE key='schema_version'", (str(version),)
                )
        if row is not None and version != SCHEMA_VERSION:
            raise ConfigError(
                f"store {self.path}: schema version {row[0]}, but this igmu reads version "
                f"{SCHEMA_VERSION}. Use another --store file (or delete this one: it holds "
                "caches and results of an other igmu version)."
            )

    def close(self) -> None:
        self.db.close()

    # --- caches (commit per batch so an interrupted run keeps its work) ---
    def get_features(self, backbone: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        found = {}
        for key in set(keys):
            row = self.db.execute(
                "SELECT vector FROM features WHERE backbone=? AND sha256=?", (backbone, key)
            ).fetchone()
            if row is not None:
                found[key] = np.frombuffer(row[0], dtype=np.float64)
        return found

    def put_features(self, backbone: str, vectors: dict[str, np.ndarray]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO features VALUES (?, ?, ?)",
            [(backbone, k, np.asarray(v, dtype=np.float64).tobytes()) for k, v in vectors.items()],
        )
        self.db.commit()

    def get_detections(self, detector: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for key in set(keys):
            row = self.db.execute(
                "SELECT payload FROM detections WHERE detector=? AND sha256=?", (detector, key)
            ).fetchone()
            if row is not None:
                found[key] = json.loads(row[0])
        return found

    def put_detections(self, detector: str, payloads: dict[str, dict[str, Any]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO detections VALUES (?, ?, ?)",
            [(detector, k, json.dumps(v, sort_keys=True)) for k, v in payloads.items()],
        )
        self.db.commit()

    def get_pair_scores(
        self, metric: str, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], float]:
        found = {}
        for a, b in set(pairs):
            row = self.db.execute(
                "SELECT value FROM pair_scores WHERE metric=? AND sha_a=? AND sha_b=?",
                (metric, a, b),
            ).fetchone()
            if row is not None:
                found[(a, b)] = float(row[0])
        return found

    def put_pair_scores(self, metric: str, values: dict[tuple[str, str], float]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO pair_scores VALUES (?, ?, ?, ?)",
            [(metric, a, b, float(v)) for (a, b), v in values.items()],
        )
        self.db.commit()

    # --- results (one transaction: a killed run leaves the previous state intact) ---
    def write_run(
        self,
        run_id: str,
        task: str,
        task_version: int,
        run_dir: str,
        spec: dict[str, Any],
        fingerprints: dict[str, Any],
        left_out: list[str],
        samples: list[Sample],
        aggregates: list[Aggregate],
        comparisons: list[Comparison] = (),
    ) -> None:
        """Replace the run's records; a rerun refreshes its folder, fingerprints and package
        versions (the same run id means the same inputs, not the same software)."""
        now = time.time()
        with self.db:
            self.db.execute("DELETE FROM samples WHERE run_id=?", (run_id,))
            self.db.execute("DELETE FROM aggregates WHERE run_id=?", (run_id,))
            self.db.execute("DELETE FROM comparisons WHERE run_id=?", (run_id,))
            self.db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE "
                "SET run_dir=excluded.run_dir, finished_at=excluded.finished_at, "
                "spec_json=excluded.spec_json, fingerprints_json=excluded.fingerprints_json, "
                "left_out_json=excluded.left_out_json",
                (
                    run_id,
                    task,
                    task_version,
                    run_dir,
                    now,
                    now,
                    json.dumps(spec, sort_keys=True),
                    json.dumps(fingerprints, sort_keys=True),
                    json.dumps(left_out),
                ),
            )
            self.db.executemany(insert_sql("samples", SAMPLE_COLUMNS),
                                [(run_id, *s.row()) for s in samples])
            self.db.executemany(insert_sql("aggregates", AGGREGATE_COLUMNS),
                                [(run_id, *a.row()) for a in aggregates])
            self.db.executemany(insert_sql("comparisons", COMPARISON_COLUMNS),
                                [(run_id, *c.row()) for c in comparisons])

    def put_comparisons(self, run_id: str, kind: str, comparisons: list[Comparison]) -> None:
        """Replace a run's comparisons of one kind that name the same methods (``igmu
        compare``'s pairs)."""
        with self.db:
            for pair in {(c.method, c.other) for c in comparisons}:
                self.db.execute(
                    "DELETE FROM comparisons WHERE run_id=? AND kind=? AND method=? AND other=?",
                    (run_id, kind, *pair),
                )
            self.db.executemany(insert_sql("comparisons", COMPARISON_COLUMNS),
                                [(run_id, *c.row()) for c in comparisons])

    # --- requests: an evaluation asked for again is answered from its run ---
    def remember_request(self, request_key: str, run_id: str, extra: dict[str, Any]) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)",
                (request_key, run_id, json.dumps(extra, sort_keys=True, default=str), time.time()),
            )

    def answered(self, request_key: str) -> tuple[str, dict[str, Any]] | None:
        """(run id, extra) of a request already answered, if its run is still stored."""
        row = self.db.execute(
            "SELECT r.run_id, r.extra_json FROM requests r JOIN runs u ON u.run_id = r.run_id "
            "WHERE r.request_key=?", (request_key,)
        ).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def move_run(self, run_id: str, run_dir: str) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET run_dir=? WHERE run_id=?", (run_dir, run_id))

    def counts(self) -> dict[str, int]:
        tables = ("runs", "samples", "aggregates", "comparisons", "features", "detections",
                  "pair_scores")
        return {t: self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT run_id, task, task_version, run_dir, spec_json, fingerprints_json, "
            "left_out_json FROM runs WHERE run_id=?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        return {
            "run_id": row[0],
            "task": row[1],
            "task_version": row[2],
            "run_dir": row[3],
            "spec": json.loads(row[4]),
            "fingerprints": json.loads(row[5]),
            "left_out": json.loads(row[6]),
        }

    def aggregates(self, run_id: str) -> list[Aggregate]:
        cursor = self.db.execute(
            select_sql("aggregates", AGGREGATE_COLUMNS, "method, aspect, metric"), (run_id,)
        )
        return [Aggregate.from_row(dict(zip(names(AGGREGATE_COLUMNS), row, strict=True)))
                for row in cursor.fetchall()]

    def samples(self, run_id: str) -> list[Sample]:
        cursor = self.db.execute(
            select_sql("samples", SAMPLE_COLUMNS, ", ".join(SAMPLE_KEY)), (run_id,)
        )
        return [Sample.from_row(dict(zip(names(SAMPLE_COLUMNS), row, strict=True)))
                for row in cursor.fetchall()]

    def comparisons(self, run_id: str) -> list[Comparison]:
        cursor = self.db.execute(
            select_sql("comparisons", COMPARISON_COLUMNS, ", ".join(COMPARISON_KEY)), (run_id,)
        )
        return [Comparison.from_row(dict(zip(names(COMPARISON_COLUMNS), row, strict=True)))
                for row in cursor.fetchall()]

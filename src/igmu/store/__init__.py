"""The results store (SQLite): run specs, per-image records, aggregates, fingerprints, caches."""

from igmu.store.sqlite import Store

__all__ = ["Store"]

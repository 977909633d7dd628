"""The core layer: what every other part of igmu may use, and which uses nothing of igmu.

- ``records``: image keys, per-image samples, aggregates and comparisons, each with the one
  column definition that CSV exports, the store's tables and its inserts derive from;
- ``intervals`` and ``audit_stats``: the statistics (intervals with the prompt as the unit,
  paired tests, Holm's correction; a judge's confusion figures and their intervals);
- ``registry``: the registries every plugin kind registers into, discovered one way;
- ``files``: JSONL reading and atomic writes; ``images``: safe image decoding;
- ``errors``, ``constants``, ``settings``, ``yamlio``, ``threads``, ``timings``.
"""

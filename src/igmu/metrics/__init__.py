"""EvalIGMU metrics: one file per metric; pure maths in functional.py."""

from igmu.metrics.base import METRICS, load_all
from igmu.results import ASPECTS, MetricResult, Sample

__all__ = ["ASPECTS", "METRICS", "MetricResult", "Sample", "load_all"]

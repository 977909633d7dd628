"""EvalIGMU metrics: one file per metric; pure maths in functional.py."""

from igmu.core.records import ASPECTS, MetricResult, Sample
from igmu.metrics.base import METRICS, load_all

__all__ = ["ASPECTS", "METRICS", "MetricResult", "Sample", "load_all"]

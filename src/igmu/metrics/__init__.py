"""EvalIGMU metrics: one file per metric; pure maths in functional.py."""

from igmu.core.records import ASPECTS, MetricResult, Sample
from igmu.metrics.base import METRICS

__all__ = ["ASPECTS", "METRICS", "MetricResult", "Sample"]

"""EvalIGMU metrics: one file per metric; pure maths in functional.py."""

from igmu.metrics.base import ASPECTS, METRICS, MetricResult, Sample, load_all

__all__ = ["ASPECTS", "METRICS", "MetricResult", "Sample", "load_all"]

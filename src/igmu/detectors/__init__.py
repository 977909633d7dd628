"""Judges: decide per image whether a concept (or a person) is present."""

from igmu.detectors.base import DETECTORS, Detector, Verdict, build_detector

__all__ = ["DETECTORS", "Detector", "Verdict", "build_detector"]

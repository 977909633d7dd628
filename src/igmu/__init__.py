"""IGMU: evaluate machine unlearning in text-to-image models."""

__version__ = "0.1.0"

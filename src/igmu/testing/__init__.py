"""Test models and fixtures that tests, benchmarks and ``igmu models make-tiny`` share; never
imported by the engine."""

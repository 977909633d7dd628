"""Networks shared by metrics and detectors, resolved from a Hugging Face id or a local path."""

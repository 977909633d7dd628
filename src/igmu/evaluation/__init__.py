"""The EvalIGMU engine: pair images, run backbones once, score, aggregate, store."""

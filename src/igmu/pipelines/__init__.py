"""Text-to-image pipelines as igmu loads them, for generation, the methods and the attacks.

- ``load``: a pipeline folder or Hugging Face id -> a loaded diffusers pipeline (the class
  picked from ``model_index.json``, classes outside diffusers from the ``PIPELINE_CLASSES``
  registry), its dtype and its fingerprint;
- ``sources``: a models-file method entry (a base plus the weights applied to it) and its loader;
- ``checkpoints`` / ``adapters``: the published checkpoint formats those entries name;
- ``card``: the method card beside an unlearned model, read back (negative prompt, published
  form).
"""

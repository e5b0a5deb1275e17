"""The machinery behind :mod:`radcot.pipeline`: config loading (``include:``, ``--set``), the config schema,
the self-verifying stage store shared across experiments, and the preflight. Nothing here imports the pipeline.

- :mod:`radcot.experiment.config`: read YAML with ``include:``, apply ``--set`` overrides (rows by index or name).
- :mod:`radcot.experiment.schema`: pydantic models of the whole config, validated once into the typed
  ``PipelineConfig`` the pipeline reads; every problem reported at once.
- :mod:`radcot.experiment.store`: stage directories keyed by their content (kind, format version, settings,
  upstream output digests) whose ``DONE.json`` vouches for their outputs.
- :mod:`radcot.experiment.preflight`: resolve models, data, endpoints and files before any stage runs, from a
  ``PreflightInput`` (the validated config and a dataset accessor).
"""

"""The machinery behind :mod:`radcot.pipeline`: config loading (``include:``, ``--set``), the config schema,
the self-verifying stage store shared across experiments, and the preflight.

- :mod:`radcot.experiment.config`: read YAML with ``include:``, apply ``--set`` overrides (rows by index or name).
- :mod:`radcot.experiment.schema`: pydantic models of the whole config; every problem reported at once.
- :mod:`radcot.experiment.store`: stage directories whose ``DONE.json`` vouches for their outputs.
- :mod:`radcot.experiment.preflight`: resolve models, data, endpoints and files before any stage runs.
"""

"""Adapters of radcot to other IR toolkits (each needs its own extra; nothing here is imported by ``import radcot``).

- :mod:`radcot.integrations.pyterrier`: :class:`RADCoTExpander` and :class:`RADCoTRetriever`,
  PyTerrier transformers (``pip install 'radcot[pyterrier]'``).
"""

"""``effgate report``: where quality is over- or underpaid, from the request log. Offline only.

- ``build``: ``build()`` -> ``Report``, the summary text, JSON, and ``main`` (the command).
- ``data``: request and feedback records -> compact columns (``router_models.records`` reads
  the files).
- ``analysis``: groups, spend over time, calibration, latency; ``stats``: intervals and tests.
- ``overpaid``, ``bars``, ``findings``: the findings (over- and underpaid quality) and their
  predicted effect; ``policy``: the policy changes they suggest, as YAML.
- ``html``, ``plots``: the HTML page and its PNG plots (matplotlib: ``effgate[report]``).
- ``demo``: demo records with planted findings (``python -m gateway.report.demo``).
"""

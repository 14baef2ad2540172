"""Analysis of finished runs: records, aggregation, statistics, claims, tables, figures, reports.

* :mod:`~mmssl.analysis.records` — evaluated runs as records, their scores as one long table;
* :mod:`~mmssl.analysis.aggregate` — means over folds and seeds, what each mode adds;
* :mod:`~mmssl.analysis.claim_rules` (on :mod:`~mmssl.evaluation.stats`) — paired tests, intervals,
  Holm, power; the paper's claims decided on score tables;
* :mod:`~mmssl.analysis.claims` — ``mmssl claims`` on a sweep or on committed files;
* :mod:`~mmssl.analysis.tables`, :mod:`~mmssl.analysis.figures` — one table type rendered
  everywhere, and the figures;
* :mod:`~mmssl.analysis.sweeps`, :mod:`~mmssl.analysis.report` — a sweep's results files and
  the HTML/Markdown report.

This is the top layer below the CLI: it reads run directories through :mod:`mmssl.runs`.
"""

"""Runs: training, evaluation and brain analyses of a run directory; sweeps and launching.

* :mod:`~mmssl.runs.rundir` — run and sweep directories as typed objects (every file name);
* :mod:`~mmssl.runs.build` — data module and method from a configuration, preflight checks;
* :mod:`~mmssl.runs.checkpoints` — atomic checkpoint writes, safe reads;
* :mod:`~mmssl.runs.training` — ``mmssl pretrain`` (resume, divergence, interruption);
* :mod:`~mmssl.runs.evaluation` — ``mmssl evaluate``, features, ``mmssl generate``;
* :mod:`~mmssl.runs.brain` — ``mmssl saliency`` and ``mmssl links`` of a run;
* :mod:`~mmssl.runs.sweep`, :mod:`~mmssl.runs.launch` — ``mmssl sweep`` and where runs execute.

This layer uses the algorithms below it (``data``, ``methods``, ``evaluation``) and is used by
``analysis`` and the CLI above it.
"""

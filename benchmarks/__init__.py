"""Throughput, memory and scaling figures of mmssl; run from the repository root.

Three benchmarks, each a module with a ``main(argv)`` that prints rich tables and returns (and,
with ``--json PATH``, writes) its results; ``--help`` lists the options, ``--quick`` is a smoke
run, and ``benchmarks/README.md`` explains every column:

* ``python -m benchmarks.throughput`` — training throughput per taxonomy objective (with the
  objective's measured share of a step), the InfoNCE estimator against its mask-based
  implementation (agreement, time, memory) and a training step of every registered method
  (pairs/s, parameters, FLOPs, slowdown against the fastest decoder-free model);
* ``python -m benchmarks.neuro`` — the neuroimaging path on a simulated cohort:
  preprocessing (cold and warm cache), loading from the cache against the training step (is
  the loop fed?), 3-D training throughput and peak memory, and a figure;
* ``python -m benchmarks.scaling`` — throughput against batch size and against the number of
  data-parallel processes (negatives gathered across processes), and a quick sweep's wall time.

``make bench`` runs all three. The shared measuring kit — interleaved timing, the machine's
description and load warning, peak memory, FLOP counts, tables and JSON output — is
:mod:`benchmarks.harness`; the training step every benchmark times is
:mod:`benchmarks.workloads`. Compare numbers only from the same machine and run: the JSON
records torch version, device, threads and load.
"""

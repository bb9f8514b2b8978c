"""The tools: the ``rknn-farm`` command line (:mod:`~farm.tools.cli`) and
what it runs: :mod:`~farm.tools.doctor`, :mod:`~farm.tools.convert`,
:mod:`~farm.tools.top`, :mod:`~farm.tools.timeline`,
:mod:`~farm.tools.metrics` (also ``Farm.serve_metrics``) and
:mod:`~farm.tools.bench`."""

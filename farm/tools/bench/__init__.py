"""``rknn-farm bench``: the farm measured side by side with what a user would
write instead, in one run, on this machine.

::

    rknn-farm bench [--quick] [--duration S] [--workloads tiny,cls,rec,frame,gil]
                    [--methods inprocess,threads,processpool,zmq-floor,farm,farm-inplace,farm-stages]
                    [--workers N] [--window N] [--[no-]pacing] [--out DIR]
    python benchmarks/bench.py --quick          # the same, from a checkout

Methods (modules: :mod:`~farm.tools.bench.methods`, :mod:`~farm.tools.bench.paced`):

- ``inprocess``: one ONNX Runtime session in the calling process, sequential;
- ``threads``: a ThreadPoolExecutor of N threads, a session per thread;
- ``processpool``: a spawn-context ProcessPoolExecutor of N processes, a
  session per process made by the initializer, arrays pickled both ways;
- ``zmq-floor``: a bare pyzmq DEALER/ROUTER echo, over ipc://, of a header the
  size of the farm's task header: the floor under any ZeroMQ design;
- ``farm``: rknn-farm with N workers (schedule ``"0,1"`` for N=2), one context each;
- ``farm-inplace``: the same, its inputs written once into the farm's shared memory;
- ``farm-stages``: the same, with the ``gil`` workload's post-processing step
  in the workers (``postprocess=``) instead of in the app.

The ``gil`` workload (a small model and ~1 ms of GIL-bound pure-Python box
decoding, :mod:`~farm.tools.bench.boxes`) runs only ``inprocess``,
``threads``, ``farm`` and ``farm-stages``: where its step runs is what it measures.

The baselines deliberately call ONNX Runtime directly (it and ``onnx``, for
building the synthetic models, are imported lazily): the comparison is
against what a user would write instead of the farm, not against the farm's
own backend code. Each (workload, method) gets a sync latency (one task in
flight) and a pipelined throughput (a bounded window in flight); see
:mod:`farm.tools.bench.measure`. Ratios and the issue's targets are computed in
:mod:`farm.tools.bench.report`; docs/benchmarks.md explains how to read them.
"""

from farm.tools.bench.runner import add_arguments, main, run

__all__ = ["add_arguments", "main", "run"]

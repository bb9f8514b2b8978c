"""The runtime: where a task goes next once ``Farm`` has admitted it.

- :mod:`~farm.runtime.router`: the router thread, which composes the rest;
- :mod:`~farm.runtime.books`: every piece of shared state and the decisions on it (no I/O);
- :mod:`~farm.runtime.pacing`: admitting work no faster than it completes;
- :mod:`~farm.runtime.processes`: worker processes: start, address, watch, stop;
- :mod:`~farm.runtime.supervision`: a worker's death, hang, respawn, recycling;
- :mod:`~farm.runtime.delivery` and :mod:`~farm.runtime.callbacks`: answers to
  futures and callbacks;
- :mod:`~farm.runtime.direct` and :mod:`~farm.runtime.channels`: callers that
  read their own answers; :mod:`~farm.runtime.chunks`: a ``map()``'s short
  feeds several to a task;
- :mod:`~farm.runtime.listener`, :mod:`~farm.runtime.nodes`,
  :mod:`~farm.runtime.keys`: remote nodes joining over TCP;
- :mod:`~farm.runtime.wakepipe`, :mod:`~farm.runtime.stats`: waking a poll,
  counting.

Nothing here imports ``farm.tools``.
"""

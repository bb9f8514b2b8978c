"""The data plane: what a task carries and where its tensors live.

- :mod:`~farm.data.task`: a task and its future, ended exactly once;
- :mod:`~farm.data.tensors`: model tensor metadata and the checks on a feed;
- :mod:`~farm.data.shm`: the shared-memory arena in ``/dev/shm``;
- :mod:`~farm.data.dmabuf`: input arrays backed by a dma-buf.

Nothing here imports ``farm.runtime``: the runtime moves tasks, these modules
only describe them.
"""

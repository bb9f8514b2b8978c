"""Chunks: several feeds of one ``Farm.map`` sent as one task.

On a tiny model a task costs the app far more than its inference: its
books, its future, its header and its answer's handling were ~40 µs of the
caller's CPU against ~10 µs of inference (docs/benchmarks.md, "Chunks"). A
``map()`` of a model whose feeds travel inside a task's header (fixed shapes,
small; no stages) and whose inferences are short therefore gathers
consecutive feeds into a chunk and sends it as one task: the worker runs its
feeds one after the other, as it would run that many tasks, and answers once
with the outputs of each in turn. How many feeds go in a chunk is
``farm.runtime.direct.chunk_feeds``: about a millisecond of work, and no
more than each context's share of the map's window.

Each feed keeps its place in the map: a :class:`ChunkItem`, which the map
waits for and yields from, as it would a task's outcome. A chunk goes when
it is full, before the map waits for an answer, and when the source or the
caller was slow (a live source's frame does not wait for the next ones).

A chunk that fails as a whole (a feed its runtime rejected, a worker lost
while running it) has its feeds run again one by one with ``Farm.run`` when
the map reaches them, so that each feed gets its own outcome: only the bad
one fails, with its own error. A chunk that could not be sent ends the map
at its first feed, as a task that cannot be submitted does.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from farm.data.task import Outcome
from farm.errors import TaskError, WorkerCrashedError, map_item_error

__all__ = ["Chunk", "ChunkItem", "Chunker"]


class Chunk:
    """Feeds of one ``map()`` that go as one task; its outcome is the
    outputs of each feed in turn."""

    __slots__ = ("feeds", "descriptors", "first_index", "outcome", "error", "_rerun")

    def __init__(self, first_index: int, rerun: Callable[[Any], list[np.ndarray]]) -> None:
        self.feeds: list[Any] = []
        self.descriptors: list[list[Any]] = []  # each feed's input descriptors in turn
        self.first_index = first_index  # the map item index of its first feed
        self.outcome = Outcome()
        self.error: Optional[Exception] = None  # why it could not be sent
        self._rerun = rerun

    def outputs_of(self, index: int) -> list[np.ndarray]:
        """The outputs of feed ``index`` (its error raised)."""
        if self.error is not None:
            raise self.error
        try:
            outputs = self.outcome.result()
        except (TaskError, WorkerCrashedError):  # which feed? Each on its own tells.
            return self._rerun(self.feeds[index])
        per_feed = len(outputs) // len(self.feeds)
        return outputs[index * per_feed : (index + 1) * per_feed]


class ChunkItem:
    """One feed of a chunk, as a ``map()`` keeps it: done once its chunk is."""

    __slots__ = ("_chunk", "_index")

    def __init__(self, chunk: Chunk, index: int) -> None:
        self._chunk = chunk
        self._index = index

    def done(self) -> bool:
        chunk = self._chunk
        return chunk.error is not None or chunk.outcome.done()

    def result(self) -> list[np.ndarray]:
        return self._chunk.outputs_of(self._index)


class Chunker:
    """The chunk one ``map()`` is filling.

    ``describe(feed)``: a feed's input descriptors when it is the plain case
    that travels inside a header (``InlineFeed.descriptors``), else None;
    ``send(chunk)``: submit a chunk as one task (its outcome the chunk's);
    ``rerun(feed)``: one feed run on its own (``Farm.run``)."""

    def __init__(
        self,
        describe: Callable[[Any], Optional[list[list[Any]]]],
        send: Callable[[Chunk], None],
        rerun: Callable[[Any], list[np.ndarray]],
        size: int,
    ) -> None:
        self._describe = describe
        self._send = send
        self._rerun = rerun
        self.size = size  # feeds a chunk takes (below 2: none is made)
        self._open: Optional[Chunk] = None
        self.failed = False  # a chunk could not be sent: the map reads no more

    def add(self, index: int, feed: Any) -> Optional[ChunkItem]:
        """Put map item ``index``'s ``feed`` in the open chunk (sent once
        full); None when it does not go in one (chunks are off, or the feed
        is not the plain case): the open chunk is sent first, so the feeds
        keep their order."""
        descriptors = self._describe(feed) if self.size > 1 else None
        if descriptors is None:
            self.send()
            return None
        chunk = self._open
        if chunk is None:
            chunk = self._open = Chunk(index, self._rerun)
        item = ChunkItem(chunk, len(chunk.feeds))
        chunk.feeds.append(feed)
        chunk.descriptors += descriptors
        if len(chunk.feeds) >= self.size:
            self.send()
        return item

    def send(self) -> None:
        """Send the open chunk, if any. If it cannot be sent, its feeds raise
        the error (``map item <index>:``, of its first) and ``failed`` is set."""
        chunk, self._open = self._open, None
        if chunk is None:
            return
        try:
            self._send(chunk)
        except Exception as exc:
            chunk.error = map_item_error(chunk.first_index, exc)
            self.failed = True

"""Chunks: several feeds of one ``Farm.map`` sent as one task.

On a short model a task costs the app as much as its inference or more: its
books, its future, its header and its answer's handling were ~40 µs of the
caller's CPU against ~10 µs of inference on a tiny model, and half of the
~120 µs a 1 ms model's task cost the caller (docs/benchmarks.md, "Chunks"
and "Chunks in shared memory"). A ``map()`` of a model without stages whose
inferences are short therefore gathers consecutive feeds into a chunk and
sends it as one task: the worker runs its feeds one after the other, as it
would run that many tasks, and answers once with the outputs of each in
turn. How many feeds go in a chunk is ``farm.runtime.direct.chunk_feeds``:
about 10 ms of work, and no more than each context's share of the map's
window.

Where a chunk's feeds go is its placer's business: small fixed-shape feeds
travel inside the header (:func:`inline_placer`); larger ones go side by
side in one region of shared memory, a slot each, or are read where they
already lie in shared memory (:func:`region_placer`).

Each feed keeps its place in the map: a :class:`ChunkItem`, which the map
waits for and yields from, as it would a task's outcome. A chunk goes when
it is full, when the map waits for one of its items, at the input's end,
and when the source or the caller was slow (a live source's frame does not
wait for the next ones).

A chunk that fails as a whole (a feed its runtime rejected, a worker lost
while running it) has its feeds run again one by one with ``Farm.run`` when
the map reaches them, so that each feed gets its own outcome: only the bad
one fails, with its own error. A chunk that could not be sent ends the map
at its first feed, as a task that cannot be submitted does; one never sent
(the map was left) gives back its region and the arrays it held.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from farm.data.shm import Region, SharedArena
from farm.data.task import Outcome, feed_bytes, write_feed_into
from farm.data.tensors import PreparedInput, TensorSpec, static_bytes
from farm.errors import TaskError, WorkerCrashedError, map_item_error
from workers.protocol import INLINE_BYTES

__all__ = [
    "REGION_CHUNK_BYTES",
    "REGION_FEED_BYTES",
    "Chunk",
    "ChunkItem",
    "Chunker",
    "chunk_room",
    "fits_region_chunk",
    "inline_placer",
    "region_placer",
]

#: A chunk's region holds at most this much (its feeds' inputs side by side).
REGION_CHUNK_BYTES = 4 << 20
#: Feeds larger than this go one a task: their copy costs the app more than a
#: task's messages (docs/benchmarks.md, "Chunks in shared memory").
REGION_FEED_BYTES = 1 << 20


class Chunk:
    """Feeds of one ``map()`` that go as one task; its outcome is the
    outputs of each feed in turn."""

    __slots__ = (
        "feeds",
        "descriptors",
        "region",
        "room",
        "shapes",
        "slot",
        "held",
        "first_index",
        "outcome",
        "error",
        "_rerun",
    )

    def __init__(self, first_index: int, rerun: Callable[[Any], list[np.ndarray]]) -> None:
        self.feeds: list[Any] = []
        self.descriptors: list[list[Any]] = []  # each feed's input descriptors in turn
        self.region: Optional[Region] = None  # where feeds not in the header are (one slot each)
        self.room = 0  # feeds it has room for (0: as many as the chunker's size)
        self.shapes: tuple = ()  # its feeds' input shapes (feeds placed in a region's slots)
        self.slot = 0  # the bytes of a slot
        self.held: tuple[np.ndarray, ...] = ()  # arrays its feeds are read from in place
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

    ``place(chunk, feed, size)``: put ``feed`` in ``chunk`` of ``size`` feeds
    (its descriptors, and for a feed that does not travel in the header, its
    inputs in the chunk's region or where they lie) and say True, or say
    False when it is not a feed for a chunk (not the plain case; raises for
    a bad feed);
    ``send(chunk)``: submit a chunk as one task (its outcome the chunk's);
    ``discard(chunk)``: give back what an unsent chunk holds;
    ``rerun(feed)``: one feed run on its own (``Farm.run``)."""

    def __init__(
        self,
        place: Callable[[Chunk, Any, int], bool],
        send: Callable[[Chunk], None],
        discard: Callable[[Chunk], None],
        rerun: Callable[[Any], list[np.ndarray]],
        size: int,
    ) -> None:
        self._place = place
        self._send = send
        self._discard = discard
        self._rerun = rerun
        self.size = size  # feeds a chunk takes (below 2: none is made)
        self._open: Optional[Chunk] = None
        self.failed = False  # a chunk could not be sent: the map reads no more

    def add(self, index: int, feed: Any) -> Optional[ChunkItem]:
        """Put map item ``index``'s ``feed`` in the open chunk (sent once
        full); None when it does not go in one (chunks are off, or the feed
        is not the plain case): the open chunk is sent first, so the feeds
        keep their order."""
        if self.size < 2:
            self.send()
            return None
        chunk = self._open
        if chunk is None:
            chunk = self._open = Chunk(index, self._rerun)
        if not self._place(chunk, feed, self.size):
            if chunk.feeds:
                self.send()
            else:
                self.close()
            return None
        item = ChunkItem(chunk, len(chunk.feeds))
        chunk.feeds.append(feed)
        if len(chunk.feeds) >= self.size or len(chunk.feeds) == chunk.room:
            self.send()
        return item

    def holds_all(self, pending: int) -> bool:
        """Whether the open chunk holds all of a map's ``pending`` items (its
        newest are the open chunk's): a wait for a result must send it
        first. A wait for an item of a chunk already sent lets the open one
        fill meanwhile, so that a map kept at its window still sends full
        chunks."""
        chunk = self._open
        return chunk is not None and pending <= len(chunk.feeds)

    def send(self) -> None:
        """Send the open chunk, if any. If it cannot be sent, its feeds raise
        the error (``map item <index>:``, of its first) and ``failed`` is set."""
        chunk, self._open = self._open, None
        if chunk is None:
            return
        if not chunk.feeds:  # its only feed was bad
            self._discard(chunk)
            return
        try:
            self._send(chunk)
        except Exception as exc:
            self._discard(chunk)
            chunk.error = map_item_error(chunk.first_index, exc)
            self.failed = True

    def close(self) -> None:
        """Drop the open chunk unsent (the map ends without it), giving back
        what it holds."""
        chunk, self._open = self._open, None
        if chunk is not None:
            self._discard(chunk)


def inline_placer(describe: Callable[[Any], Optional[list[list[Any]]]]) -> Callable[[Chunk, Any, int], bool]:
    """Placing for feeds that travel in the header: ``describe(feed)`` gives
    a feed's descriptors (its bytes inside), or None when it is not the
    plain case (``InlineFeed.descriptors``)."""

    def place(chunk: Chunk, feed: Any, size: int) -> bool:
        descriptors = describe(feed)
        if descriptors is None:
            return False
        chunk.descriptors += descriptors
        return True

    return place


def region_placer(
    arena: SharedArena,
    prepare: Callable[[Any], list[PreparedInput]],
    output_bytes: Callable[[tuple], Optional[int]],
) -> Callable[[Chunk, Any, int], bool]:
    """Placing for feeds that do not fit in a header: the chunk gets a region
    with a slot for each of its feeds, and a feed's inputs are copied into
    its slot, as ``write_inputs`` would copy them into a region of its own
    (inputs that lie in shared memory are read there). ``prepare(feed)``
    checks a feed (raising for a bad one) and gives its inputs;
    ``output_bytes(shapes)``: what one feed's outputs take, for inputs of
    these shapes (None: not known yet, the feed goes alone).

    A chunk's feeds have the same shapes, each at most
    ``REGION_FEED_BYTES``, and their outputs fit the answer's header
    together; any other feed goes alone."""

    def place(chunk: Chunk, feed: Any, size: int) -> bool:
        if _rough_bytes(feed) > REGION_FEED_BYTES:  # before a check that a lone task would repeat
            return False
        prepared = prepare(feed)
        shapes = tuple(p.shape for p in prepared)
        if not chunk.feeds:
            out = output_bytes(shapes)
            slot = feed_bytes(prepared)
            if out is None or slot > REGION_FEED_BYTES:
                return False
            room = min(size, INLINE_BYTES // max(out, 1), REGION_CHUNK_BYTES // slot)
            if room < 2:
                return False
            chunk.room, chunk.shapes, chunk.slot = room, shapes, slot
        elif shapes != chunk.shapes:
            return False

        def slot_of_this_feed() -> tuple[Region, int]:
            region = chunk.region
            if region is None:  # the first feed to copy: feeds read in place need none
                region = chunk.region = arena.allocate(chunk.slot * chunk.room)
            return region, region.offset + chunk.slot * len(chunk.feeds)

        descriptors, held = write_feed_into(arena, prepared, slot_of_this_feed)
        chunk.descriptors += descriptors
        if held:
            chunk.held += held
        return True

    return place


def _rough_bytes(feed: Any) -> int:
    """The bytes of a feed's arrays, as given (0 for what is not an array)."""
    if isinstance(feed, dict):
        values: Any = feed.values()
    elif isinstance(feed, (list, tuple)):
        values = feed
    else:
        values = (feed,)
    return sum(value.nbytes for value in values if isinstance(value, np.ndarray))


def fits_region_chunk(inputs: Optional[list[TensorSpec]]) -> bool:
    """Whether a model's feeds may go several to a chunk's region: not when
    its inputs have fixed shapes that take more than ``REGION_FEED_BYTES``."""
    feed = static_bytes(inputs)
    return feed is None or feed <= REGION_FEED_BYTES


def chunk_room(inputs: Optional[list[TensorSpec]], output_bytes: Optional[int], *, inline: bool) -> int:
    """How many feeds a chunk can take at most, as far as the model says:
    its outputs come back in the answer's header, and its inputs go in the
    task's header (``inline``) or in its region."""
    most = INLINE_BYTES // max(output_bytes or 1, 1)
    feed = static_bytes(inputs) or 1
    return min(most, INLINE_BYTES // feed if inline else REGION_CHUNK_BYTES // feed)

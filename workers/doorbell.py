"""A context's doorbell: a lone task, and its answer, through shared memory.

A task of ``Farm.run`` travels as a ZeroMQ message: the caller's thread hands
it to the parent's I/O thread, which writes it to the worker's I/O thread,
which hands it to the context; the answer goes back the same way. Each of
those hand-offs wakes a sleeping thread, and on a machine whose idle CPUs
halt, a wake-up is tens of microseconds (docs/benchmarks.md, "A fifth pass").
A context that polls for its next task (``spin_us``) is awake anyway, so a
task for it can be written where it looks, and its answer where the caller
looks: no I/O thread, no wake-up, ~1 µs a hand-off.

Each local context has a :class:`Doorbell`: ``BELL_BYTES`` of memory shared
by the parent and the worker (a ``memfd`` the worker inherits: nothing to
remove from ``/dev/shm`` afterwards, whoever dies first). In it:

- the *polling* word, which the context sets while it polls (an odd count)
  and clears (even) when it stops;
- the *task* record, which the parent writes (the same header bytes a TASK
  message would carry), and the *answer* record, which the context writes.

A record is ``seq, length, crc`` and ``length`` bytes; ``crc`` covers the
other two and the bytes, and a reader takes a record only when it matches.
The writer writes the bytes first and the record's head last, but a CPU may
show another CPU those stores in another order (an Arm one may), and Python
has no memory fence: the checksum is what makes a half-seen record one to
read again, not one to act on.

The parent decides on a doorbell only while the context says it polls, and
the context may stop polling at that very moment. So a parent that sees its
task not taken within ``TAKE_GRACE_S`` cancels it on the doorbell (an empty
record of the same ``seq``) and sends it as a ZeroMQ message after all. The
context remembers the last tasks it ran (:class:`RanRecently`): whichever
copy comes second is dropped, so the task runs once either way.
"""

from __future__ import annotations

import collections
import mmap
import os
import zlib
from typing import Optional

__all__ = [
    "BELL_BYTES",
    "RECORD_ROOM",
    "TAKE_GRACE_S",
    "Doorbell",
    "RanRecently",
    "map_doorbells",
    "new_doorbell_memory",
    "open_doorbells",
]

#: Bytes of one context's doorbell: the words, a task record and an answer record.
BELL_BYTES = 64 << 10

# Where things are, in 8-byte words. The words are read and written through
# a memoryview cast to native ``Q``: one load or store each (``struct``'s
# ``pack_into`` zeroes its bytes first, and a reader may see that zero).
_POLLING = 0  # odd while the context polls for its next task
_TAKEN = 1  # the seq of the last task the context read (taken or cancelled)
_TASK = 8  # the task record's head (the parent writes it): seq, then length << 32 | crc
_ANSWER = (32 << 10) // 8  # the answer record's head (the context writes it)
_PAYLOAD = 64  # a record's bytes start this many bytes after its head

#: The most bytes a record carries: a task header with its inputs inline (at
#: most ``protocol.INLINE_BYTES`` of them) fits, and so does an answer with
#: its outputs inline. A longer one travels as a message.
RECORD_ROOM = (_ANSWER - _TASK) * 8 - _PAYLOAD

#: A task not taken this long after it was written (the context stopped
#: polling just then, or lost its CPU) is cancelled on the doorbell and sent
#: as a message. Longer than a poll takes to see it (~1 µs), short against
#: what a late task costs.
TAKE_GRACE_S = 200e-6


def _crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, (seq & 0xFFFFFFFF) ^ (seq >> 32) ^ len(payload))


class Doorbell:
    """One context's doorbell over ``BELL_BYTES`` of shared memory at ``view``.

    The parent calls :meth:`polling`, :meth:`post`, :meth:`cancel`,
    :meth:`taken` and :meth:`answer`; the context :meth:`set_polling`,
    :meth:`take` and :meth:`post_answer`. One task is on a doorbell at a
    time: the parent posts the next only once the last has ended
    (``outstanding``)."""

    __slots__ = ("_view", "_words", "_epoch", "seq", "outstanding")

    def __init__(self, view: memoryview) -> None:
        if len(view) < BELL_BYTES:
            raise ValueError(f"a doorbell needs {BELL_BYTES} bytes, got {len(view)}")
        self._view = view[:BELL_BYTES]
        self._words = self._view.cast("Q")
        self._epoch = 0  # the context's polling count
        self.seq = 0  # the parent's last task seq posted
        self.outstanding = False  # the parent's: a posted task has not ended yet

    # ── the context's side ──────────────────────────────────────────────
    def set_polling(self, polling: bool) -> None:
        """Say whether this context polls for its next task now."""
        if polling != bool(self._epoch & 1):
            self._epoch += 1
            self._words[_POLLING] = self._epoch

    def take(self) -> Optional[bytes]:
        """A task posted since the last one read: its header bytes; None
        if there is none, or it was cancelled, or it is not whole yet."""
        words = self._words
        seq = words[_TASK]
        if seq <= words[_TAKEN]:
            return None
        payload = _read_record(self._view, words, _TASK, seq)
        if payload is None:
            return None  # half seen: read it again on the next look
        words[_TAKEN] = seq
        return payload or None  # an empty record: the parent cancelled it

    def post_answer(self, header: bytes) -> bool:
        """Write the answer to the last task taken; False if it is too long
        for the doorbell (it then goes as a message)."""
        if len(header) > RECORD_ROOM:
            return False
        _write_record(self._view, self._words, _ANSWER, self._words[_TAKEN], header)
        return True

    # ── the parent's side ───────────────────────────────────────────────
    def polling(self) -> bool:
        """Whether the context says it polls for its next task."""
        return bool(self._words[_POLLING] & 1)

    def post(self, header: bytes) -> int:
        """Write a task (its header bytes, at most ``RECORD_ROOM``); its seq."""
        self.seq += 1
        self.outstanding = True
        _write_record(self._view, self._words, _TASK, self.seq, header)
        return self.seq

    def cancel(self, seq: int) -> None:
        """Take back task ``seq``: a context that has not read it yet never will."""
        _write_record(self._view, self._words, _TASK, seq, b"")

    def taken(self, seq: int) -> bool:
        """Whether the context has read task ``seq``."""
        return bool(self._words[_TAKEN] >= seq)

    def answer(self, seq: int) -> Optional[bytes]:
        """The answer to task ``seq`` once it is whole on the doorbell, else None."""
        if self._words[_ANSWER] != seq:
            return None
        return _read_record(self._view, self._words, _ANSWER, seq)


def _write_record(view: memoryview, words: memoryview, head: int, seq: int, payload: bytes) -> None:
    """The bytes and their length and checksum first, the seq (which says
    they are there) last."""
    start = head * 8 + _PAYLOAD
    view[start : start + len(payload)] = payload
    words[head + 1] = len(payload) << 32 | _crc(seq, payload)
    words[head] = seq


def _read_record(view: memoryview, words: memoryview, head: int, seq: int) -> Optional[bytes]:
    """The bytes of record ``seq`` at ``head`` if they are whole (their
    checksum matches), else None."""
    length_crc = words[head + 1]
    length = length_crc >> 32
    if length > RECORD_ROOM:
        return None
    start = head * 8 + _PAYLOAD
    payload = bytes(view[start : start + length])
    if _crc(seq, payload) != length_crc & 0xFFFFFFFF or words[head] != seq:
        return None
    return payload


class RanRecently:
    """The last few ``(task id, attempt)`` a context took from its doorbell:
    if the parent, not seeing it taken in time, sent it as a message too,
    that copy is dropped (``key in ran``). Empty (false) until a task comes
    on the doorbell, so a context that never polls checks nothing."""

    __slots__ = ("_order",)

    def __init__(self, size: int = 8) -> None:
        self._order: collections.deque[tuple[int, int]] = collections.deque(maxlen=size)

    def note(self, key: tuple[int, int]) -> None:
        self._order.append(key)

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)


def new_doorbell_memory(count: int) -> Optional[tuple[int, mmap.mmap]]:
    """Memory for ``count`` doorbells: a ``memfd`` (its descriptor, to pass
    to the worker) and the parent's mapping of it; None where the system has
    no ``memfd_create`` (the tasks then travel as messages)."""
    create = getattr(os, "memfd_create", None)
    if create is None or count <= 0:
        return None
    try:
        fd = create("rknnfarm-doorbells", getattr(os, "MFD_CLOEXEC", 0))
    except OSError:
        return None
    try:
        os.ftruncate(fd, count * BELL_BYTES)
        memory = mmap.mmap(fd, count * BELL_BYTES)
    except BaseException:
        os.close(fd)
        raise
    return fd, memory


def open_doorbells(memory: mmap.mmap, count: int) -> list[Doorbell]:
    """``count`` doorbells side by side in ``memory``."""
    view = memoryview(memory)
    return [Doorbell(view[i * BELL_BYTES : (i + 1) * BELL_BYTES]) for i in range(count)]


def map_doorbells(fd: int, count: int) -> list[Doorbell]:
    """The worker's side: map the doorbells of its ``count`` contexts from
    the descriptor it inherited (then closed: the mapping keeps the memory)."""
    try:
        memory = mmap.mmap(fd, count * BELL_BYTES)
    finally:
        os.close(fd)
    return open_doorbells(memory, count)

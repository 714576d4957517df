"""The block writer of an extraction: batches of device tensors in, whole part files out (on background threads).

:class:`BlockWriter` gathers the rows of each block of a :class:`~clipgen.store.parts.StorePlan` as batches arrive
and writes every finished block as a part file (:func:`~clipgen.store.parts.write_part`), so the model computes the
next batches while chunks are compressed and written. The extractor it is given turns a batch's packed device
tensors into per-layer arrays (``extractor.unpack(packed, embedding)``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from clipgen.errors import ClipgenError
from clipgen.store.parts import StorePlan, write_part
from clipgen.store.testing import SimulatedCrash, crash_point


class BlockWriter:
    """A thread that gathers batches into row blocks and writes each block as a part file.

    Writing is behind-the-scenes too: a finished block is handed to a single I/O thread (which compresses its chunks
    on the thread pool and writes the part file) while this thread goes on filling the next block from the queue, so
    the model never waits for compression unless the writing falls a whole block behind. Host memory: the block being
    filled, at most one block being written, and ``max_queue`` batches.
    """

    def __init__(self, plan: StorePlan, extractor: Any, *, threads: int = 0,
                 on_rows: Callable[[int], None] | None = None, max_queue: int = 4, max_blocks: int | None = None):
        self.plan, self.ex = plan, extractor
        self.q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.pool = ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1))
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipgen-store-io")
        self.pending = None  # the Future of the part file being written
        self.on_rows, self.max_blocks = on_rows, max_blocks
        self.error: BaseException | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="clipgen-store-writer", daemon=True)
        self.thread.start()

    def put(self, block: int, local_rows: np.ndarray, packed, emb, event, skipped: Sequence[tuple[int, str]]):
        """Queue one batch: rows ``local_rows`` (within ``block``) of the device tensors, plus skipped rows."""
        if self.error is not None:
            raise self.error
        while True:
            try:
                self.q.put((block, local_rows, packed, emb, event, list(skipped)), timeout=0.5)
                return
            except queue.Full:
                if self.error is not None:
                    raise self.error from None

    def _buffer(self, k: int) -> dict[str, Any]:
        if k not in self.blocks:
            a, b = self.plan.block_range(k)
            n = b - a
            arrays = {d.name: np.full((n, *d.shape), np.nan, dtype=np.float32 if d.kind == "embedding"
                                      else self.plan.dtype) for d in self.plan.layers}
            self.blocks[k] = {"arrays": arrays, "reasons": [""] * n, "left": n}
        return self.blocks[k]

    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is None:
                    self._wait_pending()
                    return
                k, rows, packed, emb, event, skipped = item
                if event is not None:
                    event.synchronize()
                buf = self._buffer(k)
                if len(rows):
                    host = self.ex.unpack(packed.numpy() if packed is not None else None,
                                          emb.numpy() if emb is not None else None)
                    for name, arr in host.items():
                        buf["arrays"][name][rows] = arr
                for r, reason in skipped:
                    buf["reasons"][r] = reason
                buf["left"] -= len(rows) + len(skipped)
                if buf["left"] == 0:
                    self._finish(k, buf)
                if self.on_rows:
                    self.on_rows(len(rows) + len(skipped))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e

    def _finish(self, k: int, buf: dict[str, Any]) -> None:
        for d in self.plan.layers:
            arr = buf["arrays"][d.name]
            if d.kind != "embedding" and self.plan.dtype == "float16":
                good = np.array([not r for r in buf["reasons"]])
                if not np.isfinite(arr[good]).all():
                    raise ClipgenError(f"layer {d.name}: activations exceed the float16 range (or are not "
                                       f"finite) in rows {self.plan.block_range(k)}; extract with --dtype float32")
        self._wait_pending()  # at most one block is being written while the next one fills
        del self.blocks[k]
        self.pending = self.io.submit(self._write, k, buf)
        if self.max_blocks is not None:  # testing hook: die right after the k-th whole part file, as a kill would
            self._wait_pending()
            crash_point(self.written, self.max_blocks)

    def _write(self, k: int, buf: dict[str, Any]) -> None:
        write_part(self.plan, k, buf["arrays"], buf["reasons"], self.pool)
        self.written += 1

    def _wait_pending(self) -> None:
        """Wait for the part file being written; re-raise its error."""
        if self.pending is not None:
            fut, self.pending = self.pending, None
            fut.result()

    def close(self, wait: bool = True) -> None:
        """Finish queued work (``wait``) or abandon it (a crash, an error in the main thread); re-raise the thread's
        error. Abandoning drops the queued batches and the block being filled; a part file being written is finished
        or not written at all (never half)."""
        if wait:
            while self.thread.is_alive():
                try:
                    self.q.put(None, timeout=0.5)
                    break
                except queue.Full:
                    if self.error is not None:
                        break
            self.thread.join()
        else:
            while True:  # let the thread end: drop what is queued, then the end marker
                try:
                    self.q.get_nowait()
                except queue.Empty:
                    break
            with contextlib.suppress(queue.Full):
                self.q.put_nowait(None)
        self.io.shutdown(wait=wait)
        self.pool.shutdown(wait=wait)
        if self.error is not None and (wait or isinstance(self.error, SimulatedCrash)):
            raise self.error

"""``PreparationProcesses``: worker processes that run ``prepare_image`` with a GIL of their own.

Preparing an image is mostly C (Pillow releases the GIL while it decodes, resizes and encodes),
but the Python around it (the PNG chunk reader, the plan, the encoder's buffers) takes the GIL
hundreds of times an image, and each time the event loop that admits and sends waits for it.

Each worker is a fresh interpreter (``python -c 'from scheduler.prepare._workers import serve;
serve()'``) that reads one call at a time from its stdin and writes the answer to its stdout,
as length-prefixed pickles. Not ``multiprocessing``: its spawn and forkserver children re-run
the caller's main module, so a script without an ``if __name__ == "__main__"`` guard would run
again in every worker; a plain fork would copy this process's threads' locks mid-use. A worker
exits when its stdin closes (``close``, or its parent died), and ignores Ctrl-C, which the
parent handles (a terminal's SIGINT reaches the whole process group).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import IO, Any

from .._errors import ImageError
from ._image import PreparedImage, prepare_image

__all__ = ["PreparationProcesses", "serve"]

_HEADER = struct.Struct("!Q")
# The folder that holds the ``scheduler`` package, put first on the workers' path: they import
# the same code as their parent, however the parent found it.
_ROOT = str(Path(__file__).resolve().parents[2])
_SERVE = "from scheduler.prepare._workers import serve; serve()"
# Seconds a stopping worker has to finish the image it holds before it is killed.
_STOP_SECONDS = 30.0


def _send(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next message; ``EOFError`` when the other side is gone."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the other side closed the pipe")
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe mid-message")
    return pickle.loads(data)


def serve() -> None:
    """A worker's loop: ``prepare_image(data, **options)`` for each call, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the pipes; anything printed goes to stderr, anything read gets nothing.
    calls = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    while True:
        try:
            data, options = _receive(calls)
        except EOFError:
            return
        try:
            answer: tuple[str, object] = ("ok", prepare_image(data, **options))
        except Exception as exc:  # the image's own failure, raised again in the parent
            answer = ("error", exc)
        del data
        try:
            _send(answers, answer)
        except pickle.PicklingError:
            _send(answers, ("error", RuntimeError(repr(answer[1]))))
        except OSError:
            return  # the parent is gone


class _WorkerDied(Exception):
    """A worker's pipe broke: it was killed, ran out of memory, or exited."""


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self) -> None:
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": _ROOT + (os.pathsep + path if path else "")}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._calls = self.process.stdin
        self._answers = self.process.stdout

    def prepare(self, data: bytes, options: dict[str, Any]) -> PreparedImage:
        """The worker's answer: its ``PreparedImage``, or its exception raised here;
        ``_WorkerDied`` when the worker is gone."""
        try:
            _send(self._calls, (data, options))
            kind, value = _receive(self._answers)
        except (EOFError, OSError) as exc:
            raise _WorkerDied(self.process.poll()) from exc
        if kind == "error":
            raise value
        assert isinstance(value, PreparedImage)
        return value

    def stop(self) -> None:
        """Close its stdin (it exits after the image it holds) and wait for it; kill it if
        it does not go."""
        with contextlib.suppress(OSError):
            self._calls.close()
        try:
            self.process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._answers.close()

    def kill(self) -> None:
        """End a worker that broke its pipe (already dead, or past use)."""
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            self._calls.close()
        self._answers.close()


def _stop_all(idle: list[_Worker], busy: set[_Worker], lock: threading.Lock) -> None:
    with lock:
        stopping, dying = list(idle), list(busy)
        idle.clear()
        busy.clear()
    for worker in stopping:
        worker.stop()
    for worker in dying:  # only at exit: a busy worker keeps its pool alive
        worker.kill()


class PreparationProcesses:
    """Worker processes, one image at a time each, started as calls need them.

    The caller bounds how many calls run at once, and so how many workers there are. A
    worker that dies (killed, out of memory) fails only the call it held: that image is tried
    once more on a new worker, and an image that kills two fails its job with ``ImageError``.
    ``close`` stops every worker (a busy one when its image is done); later calls start new ones.
    """

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = 0  # how many times close() ran: a worker started before goes then
        # Never closed: its workers go when it is collected, or at exit at the latest.
        weakref.finalize(self, _stop_all, self._idle, self._busy, self._lock)

    @property
    def pids(self) -> tuple[int, ...]:
        """The process ids of the workers alive now, idle or busy."""
        with self._lock:
            return tuple(w.process.pid for w in (*self._idle, *self._busy))

    def prepare(self, data: bytes, options: dict[str, Any]) -> PreparedImage:
        """``prepare_image(data, **options)`` in a worker (blocking the calling thread)."""
        source = str(options.get("source", "<bytes>"))
        for _ in range(2):
            try:
                worker, generation = self._take()
            except OSError as exc:  # no process can be started here (limits, no executable)
                raise ImageError(source, f"no preparation process could be started: {exc}") from exc
            try:
                prepared = worker.prepare(data, options)
            except _WorkerDied:
                self._drop(worker)
                continue
            except BaseException:
                self._give_back(worker, generation)
                raise
            self._give_back(worker, generation)
            return prepared
        raise ImageError(source, "its preparation process died twice (killed or out of memory)")

    def close(self) -> None:
        """Stop every idle worker now and each busy one as it finishes (blocking)."""
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
            self._closed += 1
        for worker in idle:
            worker.stop()

    def _take(self) -> tuple[_Worker, int]:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
            generation = self._closed
        if worker is None:
            worker = _Worker()
        with self._lock:
            self._busy.add(worker)
        return worker, generation

    def _give_back(self, worker: _Worker, generation: int) -> None:
        with self._lock:
            self._busy.discard(worker)
            keep = generation == self._closed
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.stop()

    def _drop(self, worker: _Worker) -> None:
        with self._lock:
            self._busy.discard(worker)
        worker.kill()

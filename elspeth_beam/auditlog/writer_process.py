"""The audit writer process: segments committed before a bundle ends, and loaded, on the second core.

Writing the audit is most of an audited run's extra work, and in the pipeline's own process
it can only take turns with Beam for the GIL (a writer *thread* lost: SQLite gives the GIL
back for every row, and taking it back from the busy pipeline thread cost more than the
overlap won). So each pipeline process starts one child process that owns the audit log's
files and the Landscape connections. Audit sinks hand it segments (``submit_segment``) and
keep working; the child commits each to the audit log (``segments.commit``), replies, and
hands it to its loader thread (``loader.load_records``, with its ``audit_segments`` row).
Before their bundle finishes, audit sinks ``wait`` until every segment of it is committed:
what Beam counts as done is in the audit log, and the Landscape follows it by at most the
loader's backlog (``_LOAD_BACKLOG`` segments), so a stage need not wait for the loads of the
one before. ``drain`` waits for the backlog (a run does, before it verifies); a crash leaves
committed segments unloaded, which the run's end or ``resume`` loads from the files.

At a run's end the child also digests most event tables (``digest``) while the pipeline
process verifies the run and digests the others.

Frames on the pipes are an 8-byte length and a pickle. Requests: ``("segment", ticket, url,
audit_log, (run_id, node_id, tables))``, ``("drain", ticket, url)``, ``("digest", ticket, url,
run_id, tables)`` and ``("release", url)``; replies: ``(ticket, rows, seconds, error, result)``,
in ticket order (all from the child's main thread; a load's error is reported by the next drain).
If the pipeline process dies, the child sees its stdin close and exits at once: what it
committed stays, anything else is lost with the bundle that sent it — as in a crash in-process.
"""

from __future__ import annotations

import io
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from elspeth_beam.auditlog import segments
from elspeth_beam.auditlog.buffer import AuditSegment
from elspeth_beam.auditlog.digest import digest_tables_apart
from elspeth_beam.auditlog.loader import WRITE_STATS, load_records
from elspeth_beam.core.errors import LandscapeError
from elspeth_beam.landscape.store import LandscapeStore

_HEADER = struct.Struct("<Q")
_IN_FLIGHT = 4  # segments queued in the child before a submit waits: bounds memory on both sides
_LOAD_BACKLOG = 8  # committed segments waiting for the loader before a commit waits


class AuditWriterError(LandscapeError):
    """The audit writer process failed to write a batch, or is gone."""


def _send(stream: IO[bytes], message: Any) -> None:
    """One frame. The pickler runs without its memo ("fast" mode: no shared or recursive objects
    in our messages): a segment's columns are mostly distinct strings (ids, hashes), whose
    memo entries took over half the time of pickling them in the pipeline's process."""
    buffer = io.BytesIO()
    buffer.write(_HEADER.pack(0))
    pickler = pickle.Pickler(buffer, pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(message)
    frame = buffer.getbuffer()
    _HEADER.pack_into(frame, 0, len(frame) - _HEADER.size)
    stream.write(frame)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = _HEADER.unpack(header)[0]
    payload = stream.read(size)
    return None if len(payload) < size else pickle.loads(payload)


class AuditWriter:
    """This process's handle on its writer child (``shared``); safe to use from many threads."""

    _shared: AuditWriter | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "elspeth_beam.auditlog.writer_process"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        self._send_lock = threading.Lock()
        self._reply_lock = threading.Lock()
        self._submitted = 0
        self._done = 0
        self._errors: dict[int, str] = {}
        self._results: dict[int, Any] = {}
        self._users: dict[str, int] = {}

    @classmethod
    def shared(cls) -> AuditWriter:
        with cls._shared_lock:
            if cls._shared is None or cls._shared._proc.poll() is not None:
                cls._shared = cls()
            return cls._shared

    def submit_segment(self, url: str, audit_log: str, segment: AuditSegment) -> int:
        """Queue a segment to commit and load; returns its ticket for ``wait``."""
        while self._submitted - self._done >= _IN_FLIGHT:
            self._read_reply()
        return self._request("segment", url, audit_log, (segment.run_id, segment.node_id, segment.tables))

    def drain(self, url: str) -> None:
        """Return once every segment committed so far is loaded into ``url``'s Landscape; raise
        the first load error since the last drain."""
        self.wait([self._request("drain", url)])

    @classmethod
    def drain_shared(cls, url: str) -> None:
        """Drain this process's writer, if it has one (a distributed run's are elsewhere: the
        run's catch-up loads what they committed)."""
        writer = cls._shared
        if writer is not None and writer._proc.poll() is None:
            writer.drain(url)

    def submit_digest(self, url: str, run_id: str, tables: Sequence[str]) -> int:
        """Have the child digest ``tables`` of a run (``digest.digest_tables_apart``); see ``result``."""
        return self._request("digest", url, run_id, list(tables))

    def _request(self, kind: str, *args: Any) -> int:
        with self._send_lock:
            self._submitted += 1
            ticket = self._submitted
            self._write((kind, ticket, *args))
        return ticket

    def result(self, ticket: int) -> Any:
        """What the request ``ticket`` returned, once it is done (its error raised)."""
        self.wait([ticket])
        return self._results.pop(ticket, None)

    def wait(self, tickets: Sequence[int]) -> None:
        """Return once every ticket's request is done (a segment: committed); raise the first one's error."""
        if tickets:
            while self._done < max(tickets):
                self._read_reply()
        failed = [self._errors.pop(t) for t in tickets if t in self._errors]
        if failed:
            raise AuditWriterError(f"the audit writer could not write to the Landscape: {failed[0]}")

    def attach(self, url: str) -> None:
        """One more audit writer uses ``url``; pair with ``release``."""
        with self._send_lock:
            self._users[url] = self._users.get(url, 0) + 1

    def release(self, url: str) -> None:
        """An audit writer is done with ``url``: after the last, the child closes its connection."""
        with self._send_lock:
            self._users[url] = self._users.get(url, 1) - 1
            if self._users[url] <= 0 and self._proc.poll() is None:
                del self._users[url]
                self._write(("release", url))

    @classmethod
    def peak_rss_mb(cls) -> float:
        """The writer child's peak resident memory (Linux ``VmHWM``), 0 without one."""
        writer = cls._shared
        try:
            status = Path(f"/proc/{writer._proc.pid}/status").read_text() if writer else ""
        except OSError:
            return 0.0
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
        return kb / 1024

    def _write(self, message: Any) -> None:
        try:
            _send(self._proc.stdin, message)  # type: ignore[arg-type]
        except (BrokenPipeError, OSError):
            raise self._gone() from None

    def _read_reply(self) -> None:
        with self._reply_lock:
            if self._done >= self._submitted:
                return
            reply = _receive(self._proc.stdout)  # type: ignore[arg-type]
            if reply is None:
                raise self._gone()
            ticket, rows, seconds, error, result = reply
            self._done = ticket
            if error is not None:
                self._errors[ticket] = error
            elif result is not None:
                self._results[ticket] = result
            else:
                WRITE_STATS.add(rows, seconds)

    def _gone(self) -> AuditWriterError:
        code = self._proc.poll()
        return AuditWriterError(f"the audit writer process exited (code {code}); its error, if any, is printed above")


# ---- the child --------------------------------------------------------------------------------

def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Read requests on a thread (so the parent never waits on a busy writer), commit and reply
    on this one, load on a third."""
    inbox: queue.Queue[Any] = queue.Queue(maxsize=_IN_FLIGHT)

    def read() -> None:
        while (message := _receive(requests)) is not None:
            inbox.put(message)
        os._exit(0)  # the pipeline process is gone: stop now, as a crash would

    threading.Thread(target=read, daemon=True, name="audit-requests").start()
    stores = _Stores()
    loader = _Loader(stores)
    reported = (0, 0.0)  # the loads' counts the parent has been sent (with drain replies)
    while True:
        message = inbox.get()
        kind = message[0]
        if kind == "release":
            loader.drain()
            stores.close(message[1])
            continue
        ticket, url = message[1], message[2]
        try:
            if kind == "segment":
                segment = AuditSegment(*message[4])
                manifest = segments.commit(segments.run_dir(message[3], segment.run_id), segment)
                loader.load(url, segment, manifest)
                _send(replies, (ticket, 0, 0.0, None, None))
            elif kind == "drain":
                error = loader.drain()
                _send(replies, (ticket, WRITE_STATS.rows - reported[0], WRITE_STATS.seconds - reported[1], error, None))
                reported = (WRITE_STATS.rows, WRITE_STATS.seconds)
            elif kind == "digest":
                loader.drain()
                result = digest_tables_apart(stores.get(url).engine, message[3], message[4])
                _send(replies, (ticket, 0, 0.0, None, result))
        except Exception as exc:  # reported to whoever waits for it (a bundle fails and is retried)
            _send(replies, (ticket, 0, 0.0, _detail(exc), None))


def _detail(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class _Stores:
    """The child's Landscape connections, one per URL, shared by its threads."""

    def __init__(self) -> None:
        self._stores: dict[str, LandscapeStore] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> LandscapeStore:
        with self._lock:
            return self._stores.get(url) or self._stores.setdefault(url, LandscapeStore(url))

    def close(self, url: str) -> None:
        with self._lock:
            store = self._stores.pop(url, None)
        if store is not None:
            store.dispose()


class _Loader:
    """Loads committed segments in commit order on a thread of its own; keeps the first error."""

    def __init__(self, stores: _Stores) -> None:
        self._stores = stores
        self._queue: queue.Queue[tuple[str, AuditSegment, dict[str, Any]]] = queue.Queue(maxsize=_LOAD_BACKLOG)
        self._error: str | None = None
        threading.Thread(target=self._run, daemon=True, name="audit-loader").start()

    def load(self, url: str, segment: AuditSegment, manifest: dict[str, Any]) -> None:
        self._queue.put((url, segment, manifest))

    def drain(self) -> str | None:
        """Wait until every queued segment is loaded; the first error since the last drain."""
        self._queue.join()
        error, self._error = self._error, None
        return error

    def _run(self) -> None:
        while True:
            url, segment, manifest = self._queue.get()
            try:
                load_records(self._stores.get(url).engine, segment.tables, manifest=manifest)
            except Exception as exc:  # the segment stays committed: the run's catch-up loads it again
                self._error = self._error or f"segment {manifest['segment']}: {_detail(exc)}"
            finally:
                self._queue.task_done()


if __name__ == "__main__":
    import signal

    # Ctrl-C reaches the whole process group: the pipeline process handles it (marks the run
    # interrupted) and still needs this child; it ends when its stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the reply stream
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, replies)

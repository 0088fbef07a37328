"""The journal: every finished row appended to a file beside the cache the moment it arrives.

The batched writer (:func:`~polars_llm._engine.write_batches`) commits finished rows to DuckDB once a
second; a process killed in between would lose the answers it had received (and paid for) since the last
commit. So each outcome is also appended, one ``write`` per outcome, to a *segment* file in the directory
``<cache>.journal/`` beside the cache. A ``write`` survives the process being killed (the kernel's page
cache holds it); with ``fsync=True`` a task also flushes the segment to disk off the event loop, so a power
cut loses at most the answers of the last flush (a few milliseconds).

Segments follow the writer's batches: taking a batch from the sink *seals* the current segment (the next
outcome opens a new one), and once the batch is committed its sealed segment is deleted. A segment still
on disk when the store is opened was left by a killed run: :func:`replay` folds its records into DuckDB
before anything is sent, then deletes it.

Record framing: ``<u32 json length><u32 vector bytes><u32 crc32 of both>`` then the JSON array of the
outcome's fields and, for an embedding, its float32 values. A record cut short by the kill (or with a
wrong checksum) ends the segment: it and anything after it are ignored.

Replay is idempotent: a record is applied only when the row's stored ``finished_at`` is older than the
record's (or unset), so a segment folded by a run killed just before deleting it is not counted twice.

>>> import tempfile
>>> from pathlib import Path
>>> from .store import Outcome
>>> d = Path(tempfile.mkdtemp())
>>> j = Journal(d / "cache.duckdb.journal")
>>> j.append(Outcome(key="k1", status="done", attempts=1, finished_at=1.5, result="hi"))
>>> [o.result for o in read_segment(next(j.directory.iterdir()))]
['hi']
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import duckdb
import orjson
import pyarrow as pa

from .._bridge import offload
from .outcomes import Outcome, apply_outcomes

__all__ = ["Journal", "journal_dir", "read_segment", "replay"]

log = logging.getLogger("polars_llm")

_HEADER: Final = struct.Struct("<III")
_FIELDS: Final = (
    "key", "status", "attempts", "finished_at", "result", "error", "error_kind",
    "tokens_in", "tokens_out", "tokens_reasoning", "tokens_cached", "cost",
)  # fmt: skip
_SUFFIX: Final = ".journal"
_SEQUENCE = itertools.count()
_LIVE: set[str] = set()  # segments being written by a journal of this process: never replayed
_LIVE_LOCK = threading.Lock()


def journal_dir(cache: Path) -> Path:
    """The journal directory of the cache file ``cache``.

    >>> journal_dir(Path("/x/cache.duckdb")).as_posix()
    '/x/cache.duckdb.journal'
    """
    return cache.with_name(cache.name + _SUFFIX)


def _vector_bytes(embedding: pa.Array) -> bytes | None:
    """The float32 values of a length-1 ``list<float>`` array, or ``None`` when they hold nulls."""
    flat = embedding.flatten()
    if flat.type != pa.float32():
        flat = flat.cast(pa.float32())
    if flat.null_count:
        return None
    data = flat.buffers()[1]
    if data is None:
        return b""
    return data.to_pybytes()[flat.offset * 4 : (flat.offset + len(flat)) * 4]


def encode(outcome: Outcome) -> bytes:
    """One framed record."""
    fields: list[Any] = [getattr(outcome, name) for name in _FIELDS]
    vector = b""
    if outcome.embedding is not None:
        raw = _vector_bytes(outcome.embedding)
        if raw is None:  # nulls inside the vector (not seen in practice): keep them as JSON
            fields.append(outcome.embedding.flatten().to_pylist())
        else:
            fields.append(len(raw) // 4)
            vector = raw
    try:
        body = orjson.dumps(fields, default=str)  # ~1 µs: this runs on the event loop for every answer
    except (TypeError, ValueError):  # an int beyond 64 bits, a lone surrogate: escaped plain JSON
        body = json.dumps(fields, default=str).encode()
    crc = zlib.crc32(vector, zlib.crc32(body))
    return _HEADER.pack(len(body), len(vector), crc) + body + vector


def _decode(body: bytes, vector: bytes) -> Outcome:
    fields = json.loads(body)
    embedding = None
    if len(fields) > len(_FIELDS):
        extra = fields.pop()
        if isinstance(extra, list):
            values = pa.array(extra, type=pa.float32())
        else:
            values = pa.Array.from_buffers(pa.float32(), int(extra), [None, pa.py_buffer(vector)])
        embedding = pa.ListArray.from_arrays(pa.array([0, len(values)], type=pa.int32()), values)
    return Outcome(**dict(zip(_FIELDS, fields, strict=True)), embedding=embedding)


def read_segment(path: Path) -> list[Outcome]:
    """The whole records of one segment, in order; a torn or corrupt record ends it."""
    data = path.read_bytes()
    out: list[Outcome] = []
    at = 0
    while at + _HEADER.size <= len(data):
        body_len, vector_len, crc = _HEADER.unpack_from(data, at)
        start = at + _HEADER.size
        end = start + body_len + vector_len
        if end > len(data):
            break  # cut short by the kill
        body, vector = data[start : start + body_len], data[start + body_len : end]
        if zlib.crc32(vector, zlib.crc32(body)) != crc:
            break
        try:
            out.append(_decode(body, vector))
        except (ValueError, TypeError, pa.ArrowException):
            break
        at = end
    return out


def _segments(directory: Path) -> list[Path]:
    try:
        found = sorted(directory.glob("*.log"), key=lambda p: p.stat().st_mtime_ns)
    except OSError:
        return []
    with _LIVE_LOCK:
        return [p for p in found if str(p) not in _LIVE]


def _fresh(con: duckdb.DuckDBPyConnection, outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The outcomes not folded yet: the row's stored ``finished_at`` is older than the outcome's."""
    latest: dict[str, Outcome] = {}
    for o in outcomes:  # the latest outcome of a key wins
        seen = latest.get(o.key)
        if seen is None or (o.finished_at or 0.0) >= (seen.finished_at or 0.0):
            latest[o.key] = o
    frame = pa.table(
        {
            "key": pa.array(list(latest), type=pa.string()),
            "finished_at": pa.array([o.finished_at for o in latest.values()], type=pa.float64()),
        }
    )
    con.register("_pl_journal", frame)
    try:
        rows = con.execute(
            "SELECT b.key FROM _pl_journal AS b LEFT JOIN requests AS r ON r.key = b.key "
            "WHERE r.finished_at IS NULL OR b.finished_at IS NULL "
            "OR r.finished_at < make_timestamp((b.finished_at * 1000000)::BIGINT)"
        ).fetchall()
    finally:
        con.unregister("_pl_journal")
    return [latest[key] for (key,) in rows]


def replay(con: duckdb.DuckDBPyConnection, cache: Path) -> int:
    """Fold the segments a killed run left beside ``cache`` into its DuckDB connection ``con``, in one
    transaction, then delete them; returns the number of rows written."""
    directory = journal_dir(cache)
    segments = _segments(directory)
    if not segments:
        return 0
    outcomes = [o for segment in segments for o in read_segment(segment)]
    con.execute("BEGIN TRANSACTION")
    try:
        fresh = _fresh(con, outcomes) if outcomes else []
        apply_outcomes(con, fresh)
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    for segment in segments:
        segment.unlink(missing_ok=True)
    _tidy(directory)
    return len(fresh)


def _tidy(directory: Path) -> None:
    """Remove the journal directory once it is empty (no trace beside the cache after a clean run)."""
    with contextlib.suppress(OSError):
        directory.rmdir()


class Journal:
    """The journal of one sink (see the module docstring). Appends happen on the event loop; :meth:`sync`
    (``fsync=True``) and :meth:`remove` in worker threads."""

    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        self._fd: int | None = None
        self._path: Path | None = None
        self._sealed: list[Path] = []
        self._mine: list[Path] = []
        self._lock = threading.Lock()  # the current fd, between appends/seals and a concurrent sync
        self.dirty = anyio.Event() if fsync else None
        self.broken = False

    @classmethod
    def for_store(cls, store: Any, *, fsync: bool = False) -> Journal | None:
        """The journal of a sink writing to ``store``: none for an in-memory store or a remote one (Ray)."""
        path = getattr(store, "path", None)
        if not isinstance(path, Path):  # in memory, or a store that lives elsewhere (Ray's hub)
            return None
        return cls(journal_dir(path), fsync=fsync)

    def _open(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{os.getpid()}-{next(_SEQUENCE):08d}-{os.urandom(4).hex()}.log"
        with _LIVE_LOCK:
            _LIVE.add(str(path))
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._path = path
        self._mine.append(path)
        return self._fd

    def append(self, outcome: Outcome) -> None:
        """Append one outcome (one ``write``). A journal that cannot be written (disk full, directory
        removed) says so once and stops: the run goes on, its rows still reach DuckDB in batches."""
        if self.broken:
            return
        record = encode(outcome)
        try:
            fd = self._fd if self._fd is not None else self._open()
            os.write(fd, record)
        except OSError as error:
            self.broken = True
            log.warning(
                "the journal %s cannot be written (%s): finished rows are kept in batches only",
                self.directory,
                error,
            )
            return
        if self.dirty is not None:
            self.dirty.set()

    def seal(self) -> list[Path]:
        """End the current segment (its records are in the batch just taken); the sealed segments so far."""
        with self._lock:
            if self._fd is not None and self._path is not None:
                os.close(self._fd)  # no fsync: the batch is committed to DuckDB (which syncs) right after
                self._sealed.append(self._path)
                self._fd = self._path = None
        sealed, self._sealed = self._sealed, []
        return sealed

    def remove(self, segments: Sequence[Path]) -> None:
        """Delete segments whose records are committed to DuckDB."""
        for path in segments:
            path.unlink(missing_ok=True)
            with _LIVE_LOCK:
                _LIVE.discard(str(path))

    def sync(self) -> None:
        """Flush the current segment to disk (``fsync=True``; in a worker thread)."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    async def keep_synced(self) -> None:
        """While the run lasts: flush what was appended, off the event loop, as often as the disk allows."""
        assert self.dirty is not None
        while True:
            await self.dirty.wait()
            self.dirty = anyio.Event()
            await offload(self.sync)

    def close(self) -> None:
        """Close the current segment. Segments not removed yet (a batch whose write failed) stay on disk and
        are no longer live: the next open of the store folds them."""
        self.seal()
        with _LIVE_LOCK:
            for path in self._mine:
                _LIVE.discard(str(path))
        if self._mine:
            _tidy(self.directory)
        self._mine = []


def iter_segments(cache: Path) -> Iterator[Path]:
    """The segment files beside ``cache`` (for tests and the ``status`` command)."""
    yield from _segments(journal_dir(cache))

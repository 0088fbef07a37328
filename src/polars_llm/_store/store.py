"""The durable job store: one DuckDB file holding every request and its outcome.

Tables (also in :data:`~polars_llm._store.tables.TABLES_DOC`, with the columns the store reads and writes):

``requests``
    one row per content key: ``key`` (32-hex), ``prompt``, ``base_url``, ``model``, ``system``, ``params``
    (JSON text), ``schema_name``, ``schema`` (JSON text), ``input`` (a struct row's turns and images, JSON
    text), ``status`` (``pending`` | ``done`` | ``failed``), ``result``, ``embedding`` (``FLOAT[]``),
    ``error``, ``error_kind``, ``attempts`` (summed over runs), ``tokens_in``, ``tokens_out``,
    ``tokens_reasoning``, ``tokens_cached``, ``cost``, ``created_at``, ``updated_at``, ``finished_at`` (UTC
    ``TIMESTAMP``), ``batch_id``, ``k64`` (see below). No API key is ever stored.
``batches``
    one row per batch submitted in batch mode (see :mod:`polars_llm._store.batches`).
``model_prices``
    the provider's price list (``base_url``, ``model``, ``price_in``/``price_out`` in USD per million
    tokens, ``max_output``, ``fetched_at``), fetched once and reused.
``schema_version``
    ``version``, ``applied_at``: one row per applied migration (see :mod:`polars_llm._store.migrations`).

There is no primary key or index: a DuckDB ``VARCHAR`` primary key makes bulk inserts several times
slower, and DuckDB answers a join of many keys with a scan whatever the index. Look-ups therefore join on
``k64`` (the key's first 64 bits as an integer, see :func:`k64`) and compare the full key only on the
rows that matched it: a chunk's look-up reads 8 bytes per stored row instead of a 32-character key, so
a streamed rerun stays fast when the file holds millions of rows. Uniqueness of ``key`` comes from the
single writer: every insert is an anti-join against ``requests``, and all calls on one file in this
process are serialised by one lock. Another process cannot open the file at all (DuckDB holds an
exclusive file lock), which :meth:`Store.open` reports as a :class:`StoreError` naming the holder.

Every write is one transaction; DuckDB's write-ahead log makes a committed batch survive ``kill -9``, and
the journal (:mod:`polars_llm._store.journal`) keeps the answers received since the last write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import anyio
import duckdb
import polars as pl
import pyarrow as pa

from .. import exceptions as exc
from .._bridge import offload
from ..exceptions import ConfigError, StoreError
from . import migrations as _migrations
from . import scratch as _scratch
from .journal import replay
from .locking import connect, path_lock, prepare_file, probe
from .outcomes import Outcome, apply_outcomes, now_us
from .tables import DETAIL_SCHEMA, OUTPUT_COLUMNS, k64

_log = logging.getLogger("polars_llm")

__all__ = ["Outcome", "Store", "apply_outcomes", "open_store"]

_JOB_COLUMNS: Final = (
    "key", "prompt", "base_url", "model", "system", "params", "schema_name", "schema", "input",
)  # fmt: skip
_REQUIRED_JOB_COLUMNS: Final = ("key", "prompt", "base_url", "model", "params")
_LOOKUP_SCHEMA: Final = {"key": pl.String, "status": pl.String, "result": pl.String, "error": pl.String}
_VECTOR_SCHEMA: Final = {
    "key": pl.String, "status": pl.String, "embedding": pl.List(pl.Float32), "error": pl.String,
}  # fmt: skip


def _hits(table: str, columns: str) -> str:
    """SQL ``hit``: ``columns`` of the ``requests`` rows (alias ``r``) whose ``k64`` is in ``table``. It
    is materialised, so the caller's join on the full ``key`` reads those rows only."""
    return (
        f"WITH hit AS MATERIALIZED (SELECT {columns} FROM requests AS r "
        f"SEMI JOIN {table} AS q ON r.k64 = q.k64) "
    )


class Store:
    """Durable job store in one DuckDB file (``path=None``: in memory, nothing on disk).

    Thread-safe: every call holds one lock per file, shared by all stores of this process on that file.

    >>> with Store.open(None) as store:
    ...     store.register(pl.DataFrame({"key": ["k1"], "prompt": ["hi"], "base_url": ["u"], "model": ["m"],
    ...                                  "params": ["{}"]}))
    ...     store.counts()
    1
    {'pending': 1}
    """

    path: Path | None

    def __init__(self, con: duckdb.DuckDBPyConnection, version: int, path: Path | None = None) -> None:
        self._con: duckdb.DuckDBPyConnection | None = con
        self.path = path
        self.version = version
        self._lock = path_lock(path)
        self._blank = False  # a scratch store nothing was written to yet: look-ups need no query

    @classmethod
    def open(cls, path: Path | None) -> Store:
        """Open (creating or migrating) the store at ``path``; ``None`` keeps it in memory.

        Outcomes a killed run left in the journal beside the file are folded in first (see
        :mod:`polars_llm._store.journal`).

        Raises:
            StoreError: the file is locked by another process, cannot be created, is not a polars_llm cache,
                or was written by a newer polars_llm.
        """
        if path is None:
            store = cls(*_scratch.take())  # (an emptied one from an earlier call, when there is one)
            store._blank = True
            return store
        path = Path(path).expanduser().absolute()
        with path_lock(path):
            prepare_file(path)
            if path.exists():
                probe(path)
            con = connect(path, read_only=False)
            try:
                version = _migrations.migrate(con, path=path)
                replay(con, path)  # answers a killed run received but had not written yet
            except BaseException:
                con.close()
                raise
        return cls(con, version, path)

    # -- helpers -------------------------------------------------------------------------------------------

    # The connection primitives, public for the store's other tables (batches.py): one lock, one connection.

    @contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, held under the store's lock (``StoreError`` once closed)."""
        with self._lock:
            if self._con is None:
                raise StoreError(f"the cache {self._where} is closed", path=self._path_str)
            yield self._con

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection under the lock, in one transaction (rolled back on any error)."""
        self._blank = False
        with self._locked() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextmanager
    def registered(
        self, con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame | pa.Table
    ) -> Iterator[None]:
        """``frame`` visible to SQL on ``con`` as the view ``name`` while the block runs."""
        con.register(name, frame)
        try:
            yield
        finally:
            con.unregister(name)

    _locked, _transaction, _registered = locked, transaction, registered  # the names this module uses

    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else ":memory:"

    @property
    def _path_str(self) -> str | None:
        return str(self.path) if self.path is not None else None

    # -- API -----------------------------------------------------------------------------------------------

    def lookup(
        self, keys: pl.DataFrame, details: Sequence[str] = (), *, vectors: bool = False
    ) -> pl.DataFrame:
        """``key, status, result, error`` (``embedding`` instead of ``result`` with ``vectors=True``), plus
        the ``details`` columns of :data:`DETAIL_SCHEMA` asked for, for the keys of ``keys`` (column
        ``key``) present in the store."""
        base = _VECTOR_SCHEMA if vectors else _LOOKUP_SCHEMA
        schema = {**base, **{d: DETAIL_SCHEMA[d] for d in details}}
        if self._blank or keys.height == 0:
            return pl.DataFrame(schema=schema)
        frame = keys.select(pl.col("key").cast(pl.String)).with_columns(k64())
        cols = ", ".join(f"r.{c}" for c in schema)
        query = (
            _hits("_pl_lookup", cols) + "SELECT r.* FROM hit AS r SEMI JOIN _pl_lookup AS q ON r.key = q.key"
        )
        with self._locked() as con, self._registered(con, "_pl_lookup", frame):
            out = con.sql(query).pl()
        return out.cast(schema)  # type: ignore[arg-type]

    def spent(
        self, keys: pl.DataFrame, price: tuple[float, float] | None, *, before: float | None = None
    ) -> float:
        """USD already spent on ``keys``: each row's cost, else its tokens × ``price`` (per million); only
        rows finished before ``before`` (epoch seconds) when given."""
        if self._blank or keys.height == 0:
            return 0.0
        frame = keys.select(pl.col("key").cast(pl.String)).with_columns(k64())
        pin, pout = price if price is not None else (0.0, 0.0)
        when = "" if before is None else " WHERE r.finished_at < make_timestamp(?::BIGINT)"
        params: list[Any] = [pin, pout] + ([] if before is None else [int(before * 1_000_000)])
        with self._locked() as con, self._registered(con, "_pl_spent", frame):
            rows = con.execute(
                _hits("_pl_spent", "r.key, r.cost, r.tokens_in, r.tokens_out, r.finished_at")
                + "SELECT coalesce(sum(coalesce(r.cost, (coalesce(r.tokens_in, 0) * ? + "
                "coalesce(r.tokens_out, 0) * ?) / 1e6)), 0)::DOUBLE "
                f"FROM hit AS r SEMI JOIN _pl_spent AS q ON r.key = q.key{when}",
                params,
            ).fetchall()
        return float(rows[0][0])

    def token_history(self, model: str) -> tuple[int, int, int, int]:
        """What earlier answers of ``model`` say about tokens: ``(characters sent, prompt tokens, answers,
        completion tokens)`` over ``done`` rows that reported usage."""
        if self._blank:
            return 0, 0, 0, 0
        with self._locked() as con:
            rows = con.execute(
                "SELECT coalesce(sum(length(prompt) + coalesce(length(system), 0)), 0), "
                "coalesce(sum(tokens_in), 0), count(*), coalesce(sum(tokens_out), 0) FROM requests "
                "WHERE model = ? AND status = 'done' AND tokens_in > 0 AND attempts = 1",
                [model],
            ).fetchall()
        chars, tokens_in, answers, tokens_out = rows[0]
        return int(chars), int(tokens_in), int(answers), int(tokens_out)

    def prices(self, base_url: str) -> tuple[pl.DataFrame, float | None]:
        """The stored price list of ``base_url`` (``model, price_in, price_out, max_output``) and when it was
        fetched (epoch seconds), or an empty frame and ``None``."""
        with self._locked() as con:
            rows = con.execute(
                "SELECT model, price_in, price_out, max_output, epoch(fetched_at)::DOUBLE "
                "FROM model_prices WHERE base_url = ?",
                [base_url],
            ).fetchall()
        schema = {"model": pl.String, "price_in": pl.Float64, "price_out": pl.Float64, "max_output": pl.Int64}
        out = pl.DataFrame([r[:4] for r in rows], schema=schema, orient="row")
        return out, (max(r[4] for r in rows) if rows else None)

    def put_prices(self, base_url: str, prices: pl.DataFrame) -> None:
        """Replace the stored price list of ``base_url`` (``model, price_in, price_out, max_output``)."""
        frame = prices.select(
            pl.col("model").cast(pl.String),
            pl.col("price_in").cast(pl.Float64),
            pl.col("price_out").cast(pl.Float64),
            pl.col("max_output").cast(pl.Int64),
        )
        with self._transaction() as con, self._registered(con, "_pl_prices", frame):
            con.execute("DELETE FROM model_prices WHERE base_url = ?", [base_url])
            con.execute(
                "INSERT INTO model_prices SELECT ?, model, price_in, price_out, max_output, "
                "make_timestamp(?::BIGINT) FROM _pl_prices",
                [base_url, now_us()],
            )

    def register(self, jobs: pl.DataFrame) -> int:
        """Insert ``jobs`` as ``pending`` rows for keys not yet stored; returns the number inserted."""
        missing = [c for c in _REQUIRED_JOB_COLUMNS if c not in jobs.columns]
        if missing:
            raise ValueError(f"register() needs columns {missing}")
        frame = jobs.select(
            pl.col(c).cast(pl.String) if c in jobs.columns else pl.lit(None, pl.String).alias(c)
            for c in _JOB_COLUMNS
        ).with_columns(k64())
        if frame.height == 0:
            return 0
        if frame["key"].n_unique() != frame.height:
            frame = frame.unique(subset="key", keep="first", maintain_order=True)
        cols = ", ".join(_JOB_COLUMNS)
        now = now_us()
        with self._transaction() as con, self._registered(con, "_pl_jobs", frame):
            rows = con.execute(
                _hits("_pl_jobs", "r.key")
                + f"INSERT INTO requests ({cols}, k64, status, attempts, created_at, updated_at) "
                f"SELECT {', '.join('j.' + c for c in _JOB_COLUMNS)}, j.k64, 'pending', 0, "
                "make_timestamp(?::BIGINT), make_timestamp(?::BIGINT) "
                "FROM _pl_jobs AS j ANTI JOIN hit AS r ON r.key = j.key",
                [now, now],
            ).fetchall()
        return int(rows[0][0]) if rows else 0

    def write_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record a batch of outcomes in one transaction (the last outcome wins for a repeated key)."""
        if not outcomes:
            return
        with self._transaction() as con:
            apply_outcomes(con, outcomes)

    def counts(self) -> dict[str, int]:
        """Number of rows per status."""
        with self._locked() as con:
            rows = con.execute(
                "SELECT status, count(*) FROM requests GROUP BY status ORDER BY status"
            ).fetchall()
        return {str(status): int(n) for status, n in rows}

    def summary(self) -> dict[str, Any]:
        """Totals for the ``status`` command.

        Keys: ``path``, ``schema_version``, ``total``, ``by_status`` ({status: n}), ``by_model``
        ({model: {status: n}}), ``tokens_in``, ``tokens_out``, ``tokens_reasoning``, ``tokens_cached``,
        ``cost`` (USD, or ``None`` when no row has a known cost), ``cost_by_model`` and ``cost_by_day``
        ({model or "YYYY-MM-DD": USD or None}), ``error_kinds`` (the 5 most common ``error_kind`` values of
        failed rows, {kind: n}, most common first), ``last_finished_at``.
        """
        with self._locked() as con:
            by = con.execute(
                "SELECT coalesce(model, '(unknown)'), status, count(*) FROM requests "
                "GROUP BY ALL ORDER BY 1, 2"
            ).fetchall()
            totals = con.execute(
                "SELECT count(*), coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0), "
                "coalesce(sum(tokens_reasoning), 0), coalesce(sum(tokens_cached), 0), sum(cost), "
                "max(finished_at) FROM requests"
            ).fetchall()
            cost_by_model = con.execute(
                "SELECT coalesce(model, '(unknown)'), sum(cost) FROM requests WHERE attempts > 0 "
                "GROUP BY ALL ORDER BY 1"
            ).fetchall()
            cost_by_day = con.execute(
                "SELECT strftime(finished_at, '%Y-%m-%d'), sum(cost) FROM requests "
                "WHERE finished_at IS NOT NULL GROUP BY ALL ORDER BY 1"
            ).fetchall()
            kinds = con.execute(
                "SELECT error_kind, count(*) AS n FROM requests "
                "WHERE status = 'failed' AND error_kind IS NOT NULL "
                "GROUP BY error_kind ORDER BY n DESC, error_kind LIMIT 5"
            ).fetchall()
        by_status: dict[str, int] = {}
        by_model: dict[str, dict[str, int]] = {}
        for model, status, n in by:
            by_status[status] = by_status.get(status, 0) + int(n)
            by_model.setdefault(model, {})[status] = int(n)
        total, tokens_in, tokens_out, reasoning, cached, cost, last = totals[0]

        def usd(value: Any) -> float | None:
            return None if value is None else float(value)

        return {
            "path": self._path_str,
            "schema_version": self.version,
            "total": int(total),
            "by_status": dict(sorted(by_status.items())),
            "by_model": by_model,
            "tokens_in": int(tokens_in),
            "tokens_out": int(tokens_out),
            "tokens_reasoning": int(reasoning),
            "tokens_cached": int(cached),
            "cost": usd(cost),
            "cost_by_model": {str(m): usd(c) for m, c in cost_by_model},
            "cost_by_day": {str(d): usd(c) for d, c in cost_by_day},
            "error_kinds": {str(kind): int(n) for kind, n in kinds},
            "last_finished_at": last,
        }

    def export(self, out: Path, *, format: Literal["jsonl", "parquet"], where: str | None = None) -> int:
        """Write the rows (filtered by the SQL condition ``where``) to ``out``; returns the row count.

        Columns: ``key, prompt, model, status, result, error, attempts, tokens_in, tokens_out,
        tokens_reasoning, tokens_cached, cost, created_at, finished_at``, ordered by ``created_at, key``.
        """
        if format not in ("jsonl", "parquet"):
            raise ConfigError(f"export format must be 'jsonl' or 'parquet', got {format!r}")
        out = Path(out).expanduser().absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        fmt = "JSON" if format == "jsonl" else "PARQUET"
        query = f"SELECT {', '.join(OUTPUT_COLUMNS)} FROM requests"
        if where:
            query += f" WHERE ({where})"
        target = str(out).replace("'", "''")
        with self._locked() as con:
            try:
                rows = con.execute(
                    f"COPY ({query} ORDER BY created_at, key) TO '{target}' (FORMAT {fmt})"
                ).fetchall()
            except (duckdb.ParserException, duckdb.BinderException) as exc:
                raise ConfigError(f"export where={where!r} is not a valid SQL condition: {exc}") from None
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        """Checkpoint and close; safe to call twice."""
        with self._lock:
            con, self._con = self._con, None
            if con is None:
                return
            if self.path is None:
                _scratch.give_back(con, self.version, written=not self._blank)
                return
            # fails only while another connection of this process is mid-transaction; it checkpoints later
            with suppress(duckdb.Error):
                con.execute("CHECKPOINT")
            con.close()

    @property
    def closed(self) -> bool:
        return self._con is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._con is None else f"schema v{self.version}"
        return f"Store({self._where!r}, {state})"


async def open_store(path: Any, wait: float) -> Store:
    """Open the cache; while another process holds it, wait up to ``wait`` seconds for its turn, saying so
    once (a warning naming the holder), then raise its :class:`~polars_llm.StoreError`. The wait is an
    ``anyio.sleep``: an interrupt stops it at once."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            return await offload(Store.open, path)
        except exc.StoreError as error:
            left = deadline - time.monotonic()
            if error.holder is None or left <= 0:
                if told:
                    raise exc.StoreError(
                        f"{error} (waited cache_wait={wait:g} s for it)", path=error.path, holder=error.holder
                    ) from None
                raise
            if not told:
                _log.warning(
                    "the cache %s is in use by %s; waiting for it to finish (up to cache_wait=%g s; "
                    "interrupt to stop)",
                    path,
                    error.holder,
                    wait,
                )
                told = True
            await anyio.sleep(min(0.5, left))

"""Several rows per request: ``pack=N`` (or ``"auto"``) for a ``response_model`` or a row operator.

One request carries up to N rows: the instructions (system prompt) once, then the rows as a JSON object
``{"items": [...]}``, and asks for ``{"answers": [...]}`` with exactly N answers in order (the schema says
``minItems = maxItems = N``; each answer has the row's own schema). Each answer is validated like an
unpacked one and stored under the row's OWN content key — the key of the unpacked request — so a row
answered in a pack is reused by an unpacked call and the reverse, and a rerun with another ``pack``
sends nothing for finished rows.

A pack whose answer is not usable (not JSON, the wrong number of answers, refused, cut short) is split in
halves and each half sent again, down to single rows, which are sent as ordinary unpacked requests (with
their own retries); answers that are valid are kept and only the invalid ones are sent again. A request
error that belongs to a row (400…) splits the pack the same way; transient errors retry the pack.
``max_tokens`` bounds each answer, so a pack of N may write N × ``max_tokens`` tokens. A pack's tokens and
cost are shared among its rows (input by prompt length, output by answer length).

>>> from pydantic import BaseModel
>>> from polars_llm import MapConfig
>>> from polars_llm._request import request_spec
>>> class Label(BaseModel):
...     label: str
>>> packer = Packer(request_spec(MapConfig(model="m", api_key="k", cache=None, system="Label it.",
...                                        response_model=Label, pack=2)))
>>> body = packer.body(["a", "b"])
>>> body["messages"][1]["content"]
'{"items":["a","b"]}'
>>> answers = body["response_format"]["json_schema"]["schema"]["properties"]["answers"]
>>> answers["minItems"], answers["maxItems"], answers["items"]["required"]
(2, 2, ['label'])
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson
import polars as pl

from .. import exceptions as exc
from .._request import request_spec
from .._store import Outcome
from .groups import run_groups, share
from .run import FAIL, RETRY, STOP, Run, Sink, Work

if TYPE_CHECKING:
    from .._config import MapConfig
    from .._request import RequestSpec
    from .._transport import Completion

__all__ = ["AUTO_MAX_ROWS", "PACK_NOTE", "Packer", "pack_size", "pack_work", "packed_chars"]

AUTO_MAX_ROWS: Final = 20
AUTO_MAX_CHARS: Final = 8000  # rows' characters per pack at most with pack="auto"
AUTO_SHARE: Final = 0.1  # "auto": pack until the instructions cost at most this share of a row
PACK_NOTE: Final = (
    'You receive a JSON object whose "items" list holds {n} separate inputs. Treat each item on its own, '
    'exactly as if it were the only input. Reply with a JSON object whose "answers" list holds exactly '
    "{n} answers: the first answers the first item, the second the second, and so on."
)
_ITEM_CHARS: Final = 3  # the quotes and comma around each item in {"items": [...]}


def pack_size(cfg: MapConfig, prompts: pl.Series | None = None) -> int:
    """Rows per request: ``cfg.pack``, or for ``"auto"`` enough rows that the instructions (the system
    prompt, sent once per pack) cost at most a tenth of a row — at most 20 rows and 8,000 characters
    (``prompts``: the rows' texts, or their lengths in characters when only those are known).

    >>> from polars_llm import MapConfig
    >>> cfg = MapConfig(model="m", api_key="k", cache=None, pack="auto", system="x" * 300)
    >>> rows = pl.Series(["y" * 150] * 5)
    >>> pack_size(cfg, rows), pack_size(cfg.replace(system="short"), rows), pack_size(cfg.replace(pack=7))
    (20, 1, 7)
    """
    if cfg.pack != "auto":
        return int(cfg.pack)
    if prompts is None or prompts.len() == 0:
        return 1
    mean = (prompts if prompts.dtype.is_integer() else prompts.str.len_chars()).mean()
    row = max(1.0, float(mean) if isinstance(mean, int | float) else 1.0)
    wanted = math.ceil(len(cfg.system or "") / (AUTO_SHARE * row))
    return max(1, min(wanted, AUTO_MAX_ROWS, int(AUTO_MAX_CHARS // row)))


def packed_chars(chars: pl.Series, size: int) -> pl.Series:
    """Characters per request when rows of ``chars`` characters are sent ``size`` per pack (items only;
    the system prompt is counted once per request by the caller).

    >>> packed_chars(pl.Series([10, 10, 10]), 2).to_list()
    [38, 25]
    """
    if size <= 1 or chars.len() == 0:
        return chars
    frame = pl.DataFrame({"c": chars.cast(pl.Int64)}).with_row_index("i")
    grouped = frame.group_by(pl.col("i") // size, maintain_order=True).agg(
        (pl.col("c") + _ITEM_CHARS).sum() + len('{"items":[]}')
    )
    return grouped.get_column("c")


class Packer:
    """Builds the packed request of a call and reads its answer (see the module docstring)."""

    def __init__(self, spec: RequestSpec) -> None:
        if spec.response_format is None or spec.validator is None:
            raise exc.ConfigError("pack= needs a response_model (or a row operator): answers are JSON")
        self.spec = spec
        self.validate = spec.validator
        self._formats: dict[int, dict[str, Any]] = {}

    def system(self, n: int) -> str:
        note = PACK_NOTE.format(n=n)
        return f"{self.spec.system}\n\n{note}" if self.spec.system else note

    def response_format(self, n: int) -> dict[str, Any]:
        fmt = self._formats.get(n)
        if fmt is None:
            base = self.spec.response_format
            assert base is not None
            doc = base["json_schema"]
            item = copy.deepcopy(dict(doc["schema"]))
            defs = item.pop("$defs", None)
            schema: dict[str, Any] = {
                "type": "object",
                "properties": {"answers": {"type": "array", "items": item, "minItems": n, "maxItems": n}},
                "required": ["answers"],
                "additionalProperties": False,
            }
            if defs is not None:
                schema["$defs"] = defs
            name = f"{doc['name']}_pack"[:64]
            spec = {"name": name, "strict": doc["strict"], "schema": schema}
            fmt = {"type": "json_schema", "json_schema": spec}
            self._formats[n] = fmt
        return fmt

    def body(self, prompts: Sequence[str]) -> dict[str, Any]:
        """The JSON body of one pack of ``prompts``."""
        n = len(prompts)
        user = orjson.dumps({"items": list(prompts)}).decode()
        messages = [{"role": "system", "content": self.system(n)}, {"role": "user", "content": user}]
        body = self.spec.chat_body(self.spec.model, messages)
        body["response_format"] = self.response_format(n)
        if isinstance(body.get("max_tokens"), int):
            body["max_tokens"] *= n
        return body

    def answers(self, completion: Completion, n: int) -> list[Any] | None:
        """The ``n`` answers of a packed reply in order, or ``None`` when the reply is not usable."""
        if completion.refusal is not None or completion.unusable is not None or completion.text is None:
            return None
        text = completion.text.strip()
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            return None
        try:
            doc = orjson.loads(text[start : end + 1])
        except orjson.JSONDecodeError:
            return None
        items = doc.get("answers") if isinstance(doc, dict) else None
        return items if isinstance(items, list) and len(items) == n else None


class _Payload:
    """What the transport sends for one pack: ``body(spec)`` as for a struct row."""

    __slots__ = ("packer", "prompts")

    def __init__(self, packer: Packer, prompts: list[str]) -> None:
        self.packer, self.prompts = packer, prompts

    def body(self, spec: RequestSpec) -> dict[str, Any]:
        return self.packer.body(self.prompts)

    def __len__(self) -> int:
        return len(self.packer.system(len(self.prompts))) + sum(len(p) + _ITEM_CHARS for p in self.prompts)


def _share(total: int | None, weights: Sequence[int]) -> list[int | None]:

    if not total:
        return [None] * len(weights)
    return [part or None for part in share(total, weights)]


class _Packs:
    """Sends one group of rows as packs, splitting what comes back unusable (see the module docstring)."""

    def __init__(self, run: Run, sink: Sink, *, packer: Packer) -> None:
        self.run, self.packer, self.sink = run, packer, sink

    async def send(self, jobs: list[tuple[str, Any]]) -> bool:
        """Answer ``jobs``; ``False`` when the run is stopping."""
        if len(jobs) == 1:  # alone: the ordinary unpacked request, with its own retries
            key, prompt = jobs[0]
            outcome = await self.run.process(key, prompt)
            if outcome is None:
                return False
            self.sink.put(outcome)
            return True
        run, stats, budget = self.run, self.run.stats, self.run.budget
        payload = _Payload(self.packer, [prompt for _, prompt in jobs])
        chars = len(payload)
        estimate = chars / 4 + run.out_estimate * len(jobs)
        attempts = 0
        while True:
            reserved = self._worst(chars, len(jobs)) if budget is not None else 0.0
            if budget is not None and not await budget.reserve(reserved):
                return False  # max_cost reached: these rows stay pending
            cost: float | None = 0.0
            ticket = None
            error: exc.APIError
            try:
                ticket = await run.pace(estimate)
                attempts += 1
                stats.in_flight += 1
                stats.requests += 1
                try:
                    completion = await run.transport.complete(payload)  # type: ignore[arg-type]
                except exc.APIError as e:
                    error = e
                else:
                    run.succeeded(ticket, completion.limits)
                    run.release(ticket)
                    cost = run.costing.of(completion)
                    stats.tokens_in += completion.tokens_in or 0
                    stats.tokens_out += completion.tokens_out or 0
                    stats.cost += cost or 0.0
                    return await self._answered(jobs, completion, cost, attempts)
                finally:
                    stats.in_flight -= 1
            finally:
                if budget is not None:
                    budget.settle(reserved, cost)
            if isinstance(error, exc.RowError):  # one row may be to blame: find it, keep the others
                run.release(ticket)
                return await self._split(jobs)
            error.attempts = attempts
            verdict = await run.recover(error, attempts, ticket)
            if verdict is RETRY:
                continue
            if verdict is STOP:
                return False
            assert verdict is FAIL
            now, message = time.time(), str(error)
            for key, _ in jobs:
                self.sink.put(Outcome(key, "failed", attempts, now, error=message, error_kind=error.kind))
            stats.failed += len(jobs)
            return True

    def _worst(self, chars: int, n: int) -> float:
        costing = self.run.costing
        out = (costing.tokens.output_tokens_max or 0) * n
        cost = costing.price.cost(costing.tokens.input_tokens_max(chars), out)
        return cost if cost is not None else math.inf

    async def _split(self, jobs: list[tuple[str, Any]]) -> bool:
        half = len(jobs) // 2
        return await self.send(jobs[:half]) and await self.send(jobs[half:])

    async def _answered(
        self, jobs: list[tuple[str, Any]], completion: Completion, cost: float | None, attempts: int
    ) -> bool:
        items = self.packer.answers(completion, len(jobs))
        if items is None:
            return await self._split(jobs)
        texts = [orjson.dumps(item).decode() for item in items]
        tokens_in = _share(completion.tokens_in, [len(p) for _, p in jobs])
        tokens_out = _share(completion.tokens_out, [len(t) for t in texts])
        weights = [(a or 0) + (b or 0) for a, b in zip(tokens_in, tokens_out, strict=True)]
        whole = sum(weights) or 1
        now, bad = time.time(), []
        for i, ((key, prompt), text) in enumerate(zip(jobs, texts, strict=True)):
            try:
                result = self.packer.validate(text)
            except exc.OutputValidationError:
                bad.append((key, prompt))
                continue
            part = cost * weights[i] / whole if cost else None
            self.sink.put(
                Outcome(key, "done", attempts, now, result=result, tokens_in=tokens_in[i],
                        tokens_out=tokens_out[i], cost=part)
            )  # fmt: skip
        self.run.stats.done += len(jobs) - len(bad)
        if not bad:
            return True
        return await self.send(bad) if len(bad) == 1 else await self._split(bad)


def pack_work(cfg: MapConfig, prompts: pl.Series) -> Work | None:
    """The engine :class:`~polars_llm._engine.Work` that sends ``prompts`` packed, or ``None`` when each
    row goes alone (``pack`` resolves to 1). Raises :class:`~polars_llm.ConfigError` without a
    ``response_model``."""
    if cfg.pack == 1:
        return None
    packer = Packer(request_spec(cfg))
    size = pack_size(cfg, prompts)
    if size == 1:
        return None
    sender = functools.partial(_Packs, packer=packer)
    return Work(pool=functools.partial(run_groups, size=size, sender=sender))

"""``top_k``: the ``k`` rows that best fit an instruction, ranked by the LLM in listwise windows.

A knockout of windows: the candidates are cut into windows of at most ``w`` items (``window``, raised to
``2k`` so every round shrinks, lowered to what fits ``max_input_tokens``); one request per window returns
the numbers of its ``min(k, size)`` best items, best first; the survivors of all windows form the next
round, until one window remains, whose answer is the ranking. Every window of every group of a round is
one engine run. Requests: ``R(n) = ceil(n / w) + R(k · ceil(n / w))`` with ``R(m) = 1`` for
``1 < m ≤ w`` (and 0 for ``m ≤ 1``) — for ``k ≪ n`` about ``n / w · (1 + 2k/w + …)``, linear in ``n``:
``top_k(10)`` over 1,000 rows with ``w = 40`` sends 35 requests (n log₂ n ≈ 9,966). Pairwise schemes
(quickselect, heaps) need ``O(n log n)`` comparisons: ~2,000+ here.

Each window's prompt holds the instruction and its items, so answers are cached by content: a rerun
sends nothing. An answer naming an unknown or repeated number is repaired (unknown and repeated
numbers dropped, missing places filled with the window's unnamed items in their listed order); a
window whose request failed keeps its first items in listed order. Both are counted and warned about:
that round's ranking of those windows is not the model's.

>>> import polars as pl, polars_llm
>>> from polars_llm import sim
>>> df = pl.DataFrame({"ticket": [f"ticket {i}: urgency {(i * 7) % 10}" for i in range(10)]})
>>> with sim.serve() as url:
...     out = df.llm.top_k(3, "most urgent", "m", column="ticket", window=4, base_url=url, api_key="k",
...                        cache=None, progress=False)
>>> out.rows()
[('ticket 7: urgency 9', 1), ('ticket 4: urgency 8', 2), ('ticket 1: urgency 7', 3)]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Final, Unpack

import polars as pl
from pydantic import BaseModel

from .._bridge import surfaced
from .._config import MapConfig, resolve_config, with_options
from .._cost import DEFAULT_CHARS_PER_TOKEN, Estimate
from ..exceptions import ColumnTypeError, ConfigError
from .context import input_tokens
from .estimate import PlanEstimate
from .settings import TopKOptions, TopKSettings, take, with_settings
from .stage import Spend, estimate_projected, estimate_prompts, map_stage

__all__ = ["estimate_top_k", "llm_top_k", "rank_prompt", "requests_needed", "top_k_frame"]

_ASK: Final = "Below are {m} items, numbered. Give the numbers of the {j} best items, best first."


class _Ranking(BaseModel):
    """The structured answer of one window: item numbers, best first."""

    ranking: list[int]


def rank_prompt(instruction: str, items: Sequence[str], best: int) -> str:
    """One window's prompt.

    >>> print(rank_prompt("most urgent", ["a", "b\\nc"], 1))
    most urgent
    <BLANKLINE>
    Below are 2 items, numbered. Give the numbers of the 1 best items, best first.
    <BLANKLINE>
    [1] a
    [2] b c
    """
    lines = "\n".join(f"[{i}] {' '.join(text.split())}" for i, text in enumerate(items, 1))
    return f"{instruction}\n\n{_ASK.format(m=len(items), j=best)}\n\n{lines}"


def requests_needed(n: int, k: int, window: int) -> int:
    """Requests :func:`top_k_frame` sends for ``n`` candidates (one group): see the module docstring.

    >>> requests_needed(1000, 10, 40), requests_needed(1, 10, 40), requests_needed(30, 10, 40)
    (35, 0, 1)
    """
    w = max(window, 2 * k)
    if n <= 1:
        return 0
    if n <= w:
        return 1
    windows = math.ceil(n / w)
    sizes = _window_sizes(n, windows)
    return windows + requests_needed(sum(min(k, s) for s in sizes), k, window)


def _window_sizes(n: int, windows: int) -> list[int]:
    base, extra = divmod(n, windows)
    return [base + (1 if i < extra else 0) for i in range(windows)]


def _windows(candidates: list[int], w: int) -> list[list[int]]:
    sizes = _window_sizes(len(candidates), math.ceil(len(candidates) / w))
    out, start = [], 0
    for size in sizes:
        out.append(candidates[start : start + size])
        start += size
    return out


def _chosen(answer: object, size: int, best: int) -> tuple[list[int], bool]:
    """Window positions (0-based) of the ``best`` items an answer names; whether it needed repair."""
    named = answer.get("ranking") if isinstance(answer, dict) else None
    picked: list[int] = []
    for number in named or []:
        if isinstance(number, int) and 1 <= number <= size and number - 1 not in picked:
            picked.append(number - 1)
    repaired = len(picked) < best or named is None or len(named) != len(picked)
    picked = picked[:best] + [i for i in range(size) if i not in picked][: max(0, best - len(picked))]
    return picked, repaired


def _window_limit(texts: list[str], settings: TopKSettings, cfg: MapConfig) -> int:
    tokens = input_tokens(cfg, settings.max_input_tokens)
    longest = max((len(t) for t in texts if t is not None), default=1) + 8
    fits = int((tokens * DEFAULT_CHARS_PER_TOKEN - len(settings.instruction) - len(_ASK)) // longest)
    return max(min(settings.window, fits), 2 * settings.k, 2)


def rank_groups(
    texts: list[str], groups: list[list[int]], cfg: MapConfig, settings: TopKSettings
) -> list[list[int]]:
    """Each group's top ``k`` (indices into ``texts``), best first; all groups' windows of a round are
    one engine run."""
    k = settings.k
    w = _window_limit(texts, settings, cfg)
    spend = Spend(cfg.max_cost)
    rank_cfg = cfg.replace(response_model=_Ranking, include=())
    current = [list(g) for g in groups]
    done: list[list[int] | None] = [g if len(g) <= 1 else None for g in current]
    repaired = failed = 0
    round_no = 1
    while any(d is None for d in done):
        jobs: list[tuple[int, list[int], int]] = []  # (group, window items, how many to keep)
        for g, cands in enumerate(current):
            if done[g] is None:
                jobs += [(g, win, min(k, len(win))) for win in _windows(cands, w)]
        prompts = pl.Series(
            "prompt",
            [rank_prompt(settings.instruction, [texts[i] for i in win], best) for _, win, best in jobs],
        )
        out = map_stage(prompts, rank_cfg, f"top_k: round {round_no}", spend)
        survivors: dict[int, list[int]] = {}
        for (g, win, best), (answer, status) in zip(jobs, out.iter_rows(), strict=True):
            if status != "done":
                failed += 1
                picked = list(range(best))
            else:
                picked, bad = _chosen(answer, len(win), best)
                repaired += bad
            survivors.setdefault(g, []).extend(win[p] for p in picked)
            if len(win) == len(current[g]):  # the group's last window: its answer is the ranking
                done[g] = [win[p] for p in picked]
        for g, kept in survivors.items():
            current[g] = kept
        round_no += 1
    if repaired or failed:
        warnings.warn(
            f"top_k: {failed:,} ranking request(s) failed and {repaired:,} answer(s) were repaired (items "
            "kept in listed order); run it again to retry the failed ones",
            stacklevel=3,
        )
    return [d or [] for d in done]


def _prepare(frame: pl.DataFrame, column: str, by: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    missing = [c for c in (column, *by) if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"top_k: no column {', '.join(map(repr, missing))} in the frame (columns: {frame.columns})"
        )
    values = frame.get_column(column)
    if not (values.dtype in (pl.String, pl.Null, pl.Categorical) or isinstance(values.dtype, pl.Enum)):
        raise ColumnTypeError(f"top_k needs a String column; {column!r} has dtype {values.dtype}")
    texts = values.cast(pl.String).to_list()
    indexed = frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("__i"), *by).filter(
        values.is_not_null()
    )
    if by:
        groups = indexed.group_by(list(by), maintain_order=True).agg("__i").get_column("__i").to_list()
    else:
        groups = [indexed.get_column("__i").to_list()]
    return texts, groups


def top_k_frame(frame: pl.DataFrame, settings: TopKSettings, cfg: MapConfig) -> pl.DataFrame:
    """The top ``k`` rows of ``frame`` (per group of ``by``), best first, with a ``rank`` (1 = best)."""
    texts, groups = _prepare(frame, settings.column, settings.by)
    ranked = rank_groups(texts, groups, cfg, settings)
    rows = [i for top in ranked for i in top]
    ranks = [r for top in ranked for r in range(1, len(top) + 1)]
    out = frame[pl.Series(rows, dtype=pl.UInt32)] if rows else frame.clear()
    return out.with_columns(pl.Series("rank", ranks, dtype=pl.UInt32))


def top_k_estimate(frame: pl.DataFrame, settings: TopKSettings, cfg: MapConfig) -> PlanEstimate:
    texts, groups = _prepare(frame, settings.column, settings.by)
    w = _window_limit(texts, settings, cfg)
    rank_cfg = cfg.replace(response_model=_Ranking, include=())
    first = [
        rank_prompt(settings.instruction, [texts[i] for i in win], min(settings.k, len(win)))
        for g in groups if len(g) > 1 for win in _windows(g, w)
    ]  # fmt: skip
    stages: list[tuple[str, Estimate]] = [
        ("round 1", estimate_prompts(pl.Series("prompt", first, pl.String), rank_cfg))
    ]
    total = sum(requests_needed(len(g), settings.k, w) for g in groups)
    later = total - len(first)
    if later > 0:
        avg = sum(len(p) for p in first) / max(len(first), 1)
        stages.append(
            ("later rounds (projected)", estimate_projected(pl.Series([int(avg)] * later), rank_cfg))
        )
    return PlanEstimate("top_k", tuple(stages), f"{len(groups):,} group(s), window {w}, {total:,} requests")


# --- entry points (the namespaces forward here) ----------------------------------------------------------

Frame = pl.DataFrame | pl.LazyFrame


def _prepared(
    frame: Frame, k: int, instruction: str, model: str | None, options: dict[str, Any]
) -> tuple[pl.DataFrame, TopKSettings, MapConfig]:
    settings, rest = take(TopKSettings, options, k=k, instruction=instruction)
    eager = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    return eager, settings, resolve_config(model=model, **rest)


@surfaced
@with_options
@with_settings(TopKSettings)
def llm_top_k(frame: Frame, k: int, instruction: str, model: str | None = None,
              **options: Unpack[TopKOptions]) -> pl.DataFrame:  # fmt: skip
    """The ``k`` rows of ``frame`` whose ``column`` best fits ``instruction`` (per group of ``by``), best
    first, with a ``rank`` column (see the module docstring)."""
    return top_k_frame(*_prepared(frame, k, instruction, model, dict(options)))


@surfaced
@with_options
@with_settings(TopKSettings)
def estimate_top_k(frame: Frame, k: int, instruction: str, model: str | None = None,
                   **options: Unpack[TopKOptions]) -> PlanEstimate:  # fmt: skip
    """What :func:`llm_top_k` would send and cost (first round exactly, later rounds projected).

    >>> import polars as pl
    >>> df = pl.DataFrame({"t": [f"item {i}" for i in range(1000)]})
    >>> estimate_top_k(df, 10, "best", "m", column="t", api_key="k", cache=None).to_send
    35
    """
    return top_k_estimate(*_prepared(frame, k, instruction, model, dict(options)))

"""``join``: the pairs of rows of two frames for which a statement about them holds, checked by the LLM.

``left.llm.join(right, "{left.ad} is a good match for {right.cv}", model, embed_model=...)``:

1. **blocking** — each left row's text (its columns named in the template) and each right row's are
   embedded (one ``llm.embed`` run over both sides, cached); each left row is paired with its ``k`` most
   similar right rows by cosine similarity (``k=None``: every right row, for small inputs — at most
   :data:`MAX_FULL_PAIRS` pairs). So 1,000 × 1,000 rows with ``k=10`` check 10,000 pairs, 1 % of the
   product. The number of candidate pairs is ``left rows × min(k, right rows)``, known before any request.
2. **checking** — the candidate pairs go through ``llm.filter``'s machinery (:func:`_check_pairs`, on
   :func:`~polars_llm._operators.filter.condition_mask`): the template is the filter's condition, each
   pair's named values (``left.ad: …`` / ``right.cv: …`` lines) the input, ``{"holds": bool}`` the
   answer; ``pack=N`` sends N pairs per request (the condition once per pack); each pair is cached under
   its own content key, so a rerun with another ``pack`` sends nothing; all pairs are one engine run.
3. **result** — the pairs judged true, with both sides' columns; a right column whose name the left frame
   has gets ``suffix`` (Polars' ``join`` does the same). ``how="left"`` keeps left rows without a match
   (their right columns null). A pair whose check failed (after retries) counts as no match and is
   named in a warning; a rerun asks it again and nothing else.

``max_cost`` covers both stages; :func:`estimate_join` gives the pairs and their cost before sending.

>>> import polars as pl, polars_llm
>>> from polars_llm import sim
>>> ads = pl.DataFrame({"ad": ["python dev #p1", "chef #c2"]})
>>> cvs = pl.DataFrame({"cv": ["cook #c2", "coder #p1", "pilot #x9"]})
>>> with sim.serve() as url:
...     out = ads.llm.join(cvs, "{left.ad} is a good match for {right.cv}", "m", k=2, embed_model="e",
...                        base_url=url, api_key="k", cache=None, progress=False)
>>> out.rows()
[('python dev #p1', 'coder #p1'), ('chef #c2', 'cook #c2')]
"""

from __future__ import annotations

import string
import warnings
from dataclasses import dataclass
from typing import Any, Final, Unpack

import numpy as np
import polars as pl

from .._bridge import surfaced
from .._config import MapConfig, resolve_config, with_options
from ..exceptions import ConfigError
from .estimate import PlanEstimate
from .filter import condition_mask, condition_request
from .settings import JoinOptions, JoinSettings, take, with_settings
from .stage import (
    Spend,
    embed_config,
    embed_stage,
    estimate_projected,
    estimate_prompts,
    estimate_texts,
    stage_mapper,
)

__all__ = ["MAX_FULL_PAIRS", "Template", "estimate_join", "join_frames", "llm_join", "nearest"]

MAX_FULL_PAIRS: Final = 100_000
Frame = pl.DataFrame | pl.LazyFrame
_L: Final = "__polars_llm_left__"
_R: Final = "__polars_llm_right__"


@dataclass(frozen=True, slots=True)
class Template:
    """A statement about a left and a right row: literal text and ``{left.col}`` / ``{right.col}`` slots.

    >>> t = Template.parse("{left.ad} fits {right.cv}")
    >>> t.columns("left"), t.columns("right")
    (['ad'], ['cv'])
    """

    parts: tuple[tuple[str, str | None, str | None], ...]  # (literal, side, column)

    @classmethod
    def parse(cls, text: str) -> Template:
        try:
            pieces = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(f"join template {text!r}: {exc}") from None
        parts: list[tuple[str, str | None, str | None]] = []
        for literal, name, spec, conversion in pieces:
            side, column = None, None
            if name is not None:
                side, dot, column = name.partition(".")
                if side not in ("left", "right") or not dot or not column or spec or conversion:
                    raise ConfigError(
                        f"join template {text!r}: {{{name}}} must name a column as "
                        "{left.col} or {right.col}"
                    )
            parts.append((literal, side, column))
        template = cls(tuple(parts))
        if not template.columns("left") or not template.columns("right"):
            raise ConfigError(f"join template {text!r} must name a left and a right column, like {{left.ad}}")
        return template

    def columns(self, side: str) -> list[str]:
        return list(dict.fromkeys(c for _, s, c in self.parts if s == side and c is not None))


def _side_text(frame: pl.DataFrame, columns: list[str]) -> pl.Series:
    """What is embedded for a row: its template columns' values, one per line (null if all are null)."""
    return frame.select(
        pl.concat_str([pl.col(c).cast(pl.String) for c in columns], separator="\n", ignore_nulls=True).alias(
            "t"
        )
    ).to_series()


def nearest(left: pl.Series, right: pl.Series, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(i, j)``: each left vector's ``k`` most cosine-similar right vectors (null vectors
    take no part), computed ``block`` left rows at a time.

    >>> i, j = nearest(pl.Series([[1.0, 0.0], [0.0, 1.0]]), pl.Series([[0.0, 2.0], [3.0, 0.1]]), 1)
    >>> i.tolist(), j.tolist()
    ([0, 1], [1, 0])
    """
    lmask = left.is_not_null().to_numpy()
    rmask = right.is_not_null().to_numpy()
    lidx, ridx = np.flatnonzero(lmask), np.flatnonzero(rmask)
    if len(lidx) == 0 or len(ridx) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lv = _unit(left.filter(pl.Series(lmask)))
    rv = _unit(right.filter(pl.Series(rmask)))
    kk = min(k, len(ridx))
    out_i, out_j = [], []
    for start in range(0, len(lidx), block):
        sims = lv[start : start + block] @ rv.T
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        out_i.append(np.repeat(lidx[start : start + block], kk))
        out_j.append(ridx[top.ravel()])
    return np.concatenate(out_i), np.concatenate(out_j)


def _unit(vectors: pl.Series) -> np.ndarray:
    matrix = np.asarray(vectors.cast(pl.List(pl.Float32)).to_list(), dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def _check_pairs(
    values: pl.DataFrame, condition: str, cfg: MapConfig, spend: Spend, label: str,
    *, instructions: str | None = None,
) -> pl.Series:  # fmt: skip
    """THE pair check of ``join`` and ``dedup``: whether ``condition`` holds for each candidate pair (a
    row of ``values``, the columns the condition names), null where the check failed or a value is null.

    It is ``llm.filter``'s machinery (:func:`~polars_llm._operators.filter.condition_mask`): the
    filter's prompt and schema, ``pack``, the cache by each pair's content key, failures as null; run as
    the operator's stage ``label`` (its progress bar, its share of ``max_cost``). With
    ``on_error="warn"`` the caller warns in its own words; ``"raise"`` raises
    :class:`~polars_llm.RowsFailedError` as the row operators do.
    """
    quiet = "ignore" if cfg.on_error == "warn" else cfg.on_error
    return condition_mask(
        values, condition, cfg.replace(include=(), on_error=quiet), instructions=instructions,
        name=label.partition(":")[0], mapper=stage_mapper(label, spend),
    ).rename("match")  # fmt: skip


def _check_frames(
    left: pl.DataFrame, right: pl.DataFrame, template: Template, settings: JoinSettings
) -> None:
    for side, frame in (("left", left), ("right", right)):
        missing = [c for c in template.columns(side) if c not in frame.columns]
        if missing:
            raise ConfigError(
                f"join template names {side} column(s) {', '.join(map(repr, missing))} that the {side} "
                f"frame lacks (columns: {frame.columns})"
            )
    if settings.k is None and left.height * right.height > MAX_FULL_PAIRS:
        raise ConfigError(
            f"join with k=None would check {left.height * right.height:,} pairs (more than "
            f"{MAX_FULL_PAIRS:,}); pass k=... to check each left row against its k most similar right rows"
        )
    if settings.k is not None and settings.embed_model is None:
        raise ConfigError(
            "join blocks candidate pairs by embedding similarity: pass embed_model='provider/name' "
            "(or k=None to check every pair of small inputs)"
        )


def _candidates(
    left: pl.DataFrame, right: pl.DataFrame, template: Template, cfg: MapConfig, settings: JoinSettings,
    spend: Spend | None,
) -> pl.DataFrame:  # fmt: skip
    """``(left row, right row)`` pairs to check: the full product, or each left row's k nearest."""
    if settings.k is None:
        li, ri = np.meshgrid(np.arange(left.height), np.arange(right.height), indexing="ij")
        return pl.DataFrame({_L: li.ravel(), _R: ri.ravel()}, schema={_L: pl.UInt32, _R: pl.UInt32})
    ltext = _side_text(left, template.columns("left"))
    rtext = _side_text(right, template.columns("right"))
    ecfg = embed_config(cfg, settings.embed_model, settings.embed_dimensions)
    vectors = embed_stage(pl.concat([ltext, rtext]), ecfg, "join: embedding", spend or Spend(None))
    i, j = nearest(vectors.head(left.height), vectors.tail(right.height), settings.k)
    return pl.DataFrame({_L: i, _R: j}, schema={_L: pl.UInt32, _R: pl.UInt32})


def _pair_values(
    left: pl.DataFrame, right: pl.DataFrame, pairs: pl.DataFrame, template: Template
) -> pl.DataFrame:
    """The values the template names, one row per pair: columns ``left.<col>`` and ``right.<col>`` (as
    the template names them, so the template is the filter's condition over this frame)."""
    return pl.concat(
        [
            left[pairs.get_column(_L)].select(
                pl.col(c).cast(pl.String).alias(f"left.{c}") for c in template.columns("left")
            ),
            right[pairs.get_column(_R)].select(
                pl.col(c).cast(pl.String).alias(f"right.{c}") for c in template.columns("right")
            ),
        ],
        how="horizontal",
    )


def join_frames(
    left: pl.DataFrame, right: pl.DataFrame, cfg: MapConfig, settings: JoinSettings
) -> pl.DataFrame:
    """The matching pairs with both sides' columns (see the module docstring)."""
    template = Template.parse(settings.template)
    _check_frames(left, right, template, settings)
    spend = Spend(cfg.max_cost)
    pairs = _candidates(left, right, template, cfg, settings, spend)
    values = _pair_values(left, right, pairs, template)
    verdict = _check_pairs(values, settings.template, cfg, spend, "join: checking pairs")
    sent = values.select(pl.all_horizontal(pl.all().is_not_null())).to_series()  # a null value: not asked
    failed = int((verdict.is_null() & sent).sum())
    if failed and cfg.on_error == "warn":
        warnings.warn(
            f"join: {failed:,} of {pairs.height:,} pair checks failed and count as no match; run it again "
            "to retry them (the answered ones are cached)",
            stacklevel=3,
        )
    matched = pairs.filter(verdict.fill_null(False))
    out = left.with_row_index(_L).join(matched, on=_L, how=settings.how, maintain_order="left")
    out = out.join(right.with_row_index(_R), on=_R, how="left", suffix=settings.suffix, maintain_order="left")
    return out.drop(_L, _R)


def join_estimate(
    left: pl.DataFrame, right: pl.DataFrame, cfg: MapConfig, settings: JoinSettings
) -> PlanEstimate:
    template = Template.parse(settings.template)
    _check_frames(left, right, template, settings)
    stages = []
    if settings.k is not None:
        ecfg = embed_config(cfg, settings.embed_model, settings.embed_dimensions)
        texts = pl.concat(
            [_side_text(left, template.columns("left")), _side_text(right, template.columns("right"))]
        )
        stages.append(("embedding", estimate_texts(texts, ecfg)))
    n_pairs = left.height * (right.height if settings.k is None else min(settings.k, right.height))
    cfg = cfg.replace(include=())
    if settings.k is None or stages[0][1].to_send == 0:  # the pairs are known without sending
        pairs = _candidates(left, right, template, cfg.replace(progress=False), settings, None)
        values = _pair_values(left, right, pairs, template)
        prompts, _, check_cfg = condition_request(values, settings.template, cfg)
        stages.append(("pair checks", estimate_prompts(prompts.rename("prompt"), check_cfg)))
        detail = f"{pairs.height:,} candidate pairs"
    else:  # the pairs need the embeddings: their count is known, their text projected from the averages
        none = pl.DataFrame(schema={_L: pl.UInt32, _R: pl.UInt32})
        _, _, check_cfg = condition_request(_pair_values(left, right, none, template), settings.template, cfg)
        each = _mean_chars(left, template.columns("left"), "left") + _mean_chars(
            right, template.columns("right"), "right"
        )
        stages.append(("pair checks (projected)", estimate_projected(pl.Series([each] * n_pairs), check_cfg)))
        detail = f"{n_pairs:,} candidate pairs (k={settings.k})"
    return PlanEstimate("join", tuple(stages), detail)


def _mean_chars(frame: pl.DataFrame, columns: list[str], side: str) -> int:
    """The average characters one side adds to a pair's prompt: its ``side.col: value`` lines."""
    lengths = frame.select(
        pl.sum_horizontal(pl.col(c).cast(pl.String).str.len_chars().fill_null(0) for c in columns)
    ).to_series()
    labels = sum(len(f"{side}.{c}: ") + 1 for c in columns)  # the name, ": " and the line break
    return labels + int(lengths.mean() or 0)  # type: ignore[arg-type]


# --- entry points (the namespaces forward here) ----------------------------------------------------------


def _prepared(
    left: Frame, right: Frame, template: str, model: str | None, options: dict[str, Any]
) -> tuple[pl.DataFrame, pl.DataFrame, MapConfig, JoinSettings]:  # fmt: skip
    settings, rest = take(JoinSettings, options, template=template)
    return _eager(left), _eager(right), resolve_config(model=model, **rest), settings


@surfaced
@with_options
@with_settings(JoinSettings)
def llm_join(left: Frame, right: Frame, template: str, model: str | None = None,
             **options: Unpack[JoinOptions]) -> pl.DataFrame:  # fmt: skip
    """The pairs of ``left`` and ``right`` rows for which ``template`` holds (see the module docstring)."""
    return join_frames(*_prepared(left, right, template, model, dict(options)))


@surfaced
@with_options
@with_settings(JoinSettings)
def estimate_join(left: Frame, right: Frame, template: str, model: str | None = None,
                  **options: Unpack[JoinOptions]) -> PlanEstimate:  # fmt: skip
    """What :func:`llm_join` would send and cost: the embeddings, then the candidate pairs (exact when
    the embeddings are cached or ``k=None``, else their number and average length).

    >>> import polars as pl
    >>> est = estimate_join(pl.DataFrame({"a": ["x", "y"]}), pl.DataFrame({"b": ["u", "v", "w"]}),
    ...                     "{left.a} fits {right.b}", "m", k=None, api_key="k", cache=None, price=(1, 1))
    >>> est.detail, est.to_send
    ('6 candidate pairs', 6)
    """
    return join_estimate(*_prepared(left, right, template, model, dict(options)))


def _eager(frame: Frame) -> pl.DataFrame:
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    if not isinstance(frame, pl.DataFrame):
        raise ConfigError(f"join needs a DataFrame or LazyFrame on each side, got {type(frame).__name__}")
    return frame

"""Prompt templates: ``template("Classify {title}: {body}")`` → one String expression over those columns."""

from __future__ import annotations

import string

import polars as pl

from ..exceptions import ConfigError

__all__ = ["template"]


def template(text: str) -> pl.Expr:
    """The prompt expression filling ``{column}`` placeholders of ``text`` from each row.

    ``{{`` and ``}}`` are literal braces. Values are cast to String; a row where any named column is
    null gives a null prompt (nothing is sent, its ``status`` is ``null``). A name that is not a column
    fails when the expression is evaluated, before any request, with Polars' ``ColumnNotFoundError``
    naming it. The expression is named ``prompt``, so it fits ``pl.struct(template(...), system=...)``.

    >>> import polars as pl
    >>> df = pl.DataFrame({"title": ["Kettle"], "body": ["Arrived late"], "n": [3]})
    >>> df.select(template("Classify {title} ({n} stars): {body} {{json}}")).item()
    'Classify Kettle (3 stars): Arrived late {json}'
    """
    if not isinstance(text, str):
        raise ConfigError(f"template() takes a string, got {type(text).__name__}")
    parts: list[pl.Expr] = []
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"template {text!r}: {exc} (write literal braces as {{{{ and }}}})") from None
    for literal, name, spec, conversion in pieces:
        if literal:
            parts.append(pl.lit(literal, dtype=pl.String))
        if name is None:
            continue
        if not name or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ConfigError(
                f"template {text!r}: {shown} must name a column plainly, like {{title}} (no format spec, no "
                "conversion); write literal braces as {{ and }}"
            )
        parts.append(pl.col(name).cast(pl.String))
    if not parts:
        return pl.lit("", dtype=pl.String).alias("prompt")
    return pl.concat_str(parts, ignore_nulls=False).alias("prompt")

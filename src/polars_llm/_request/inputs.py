"""Struct input: a row is a prompt plus its own system prompt, images, earlier turns and model.

``pl.struct(prompt=..., system=..., images=..., messages=..., model=...)`` (any subset holding ``prompt``):

========== ======================================= ==============================================
field      dtype                                   meaning (null = not given: the option applies)
========== ======================================= ==============================================
prompt     String (required)                       the final user turn
system     String                                  this row's system prompt (instead of ``system=``)
images     String or List(String)                  image parts added to the user turn: ``http(s)://``
                                                   and ``data:`` URLs as they are, a local file path
                                                   read and sent as a base64 ``data:`` URL
messages   List(Struct{role: String,               earlier turns, sent before the prompt
           content: String})
model      String                                  this row's model (instead of ``model=``)
========== ======================================= ==============================================

Shape problems are a :class:`~polars_llm.ConfigError` before any request (an unknown field, a wrong dtype,
no ``prompt`` field, no model for some row and no ``model`` option). Value problems fail only their row,
without a request, with an :class:`~polars_llm.InputError` naming the field (an image file that cannot be
read or is not an image, an empty image path, a turn with a null or unknown role or a null content).

The content key of a row is that of a plain call with the row's effective model and system prompt, so a
row that only differs by its ``model`` or ``system`` shares the cache of a plain call with that option;
images (a local file by its bytes' SHA-256, not its path) and earlier turns enter the key too.

>>> from polars_llm import MapConfig
>>> cfg = MapConfig(model="m", api_key="k", cache=None)
>>> s = pl.DataFrame({"prompt": ["hi", "hi"], "system": [None, "be brief"]}).to_struct("q")
>>> p = prepare_struct(s, cfg)
>>> p.keys[0] == request_spec(cfg).key_maker().key("hi"), len(p.keys)
(True, 2)
>>> p.payloads[1].body(request_spec(cfg))["messages"]
[{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi'}]
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import polars as pl

from .._config import MapConfig, no_model_error
from ..exceptions import ColumnTypeError, ConfigError, InputError
from .keys import KeyMaker
from .spec import request_spec

if TYPE_CHECKING:
    from .spec import RequestSpec

__all__ = ["FIELDS", "ROLES", "RowRequest", "StructPrepared", "check_dtype", "prepare_struct"]

MESSAGE: Final = pl.Struct({"role": pl.String, "content": pl.String})
FIELDS: Final[dict[str, pl.DataType]] = {
    "prompt": pl.String(),
    "system": pl.String(),
    "images": pl.List(pl.String),
    "messages": pl.List(MESSAGE),
    "model": pl.String(),
}
ROLES: Final = ("system", "developer", "user", "assistant", "tool")
_URL_PREFIXES: Final = ("http://", "https://", "data:")
_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_IMAGE_TOKENS_CHARS: Final = 3000  # a rough size of one image in characters (~750 tokens), for pacing


class RowRequest:
    """One struct row's request: what :meth:`body` sends in place of a plain prompt string.

    ``images`` holds ``(url, None)`` for a URL or ``(path, media_type)`` for a local file (read when the
    request is built, so only the rows in flight hold image bytes); ``error`` is the row's input problem,
    raised as :class:`InputError` instead of sending anything.
    """

    __slots__ = ("error", "images", "messages", "model", "prompt", "system")

    def __init__(
        self,
        prompt: str,
        *,
        system: str | None = None,
        model: str | None = None,
        messages: tuple[tuple[str, str], ...] = (),
        images: tuple[tuple[str, str | None], ...] = (),
        error: str | None = None,
    ) -> None:
        self.prompt = prompt
        self.system = system
        self.model = model
        self.messages = messages
        self.images = images
        self.error = error

    def __len__(self) -> int:
        """Approximate characters sent (for token-rate pacing): prompt, system, turns, images."""
        turns = sum(len(content) for _, content in self.messages)
        return len(self.prompt) + len(self.system or "") + turns + _IMAGE_TOKENS_CHARS * len(self.images)

    def __repr__(self) -> str:
        return f"RowRequest({self.prompt!r}, model={self.model!r}, images={len(self.images)})"

    def body(self, spec: RequestSpec) -> dict[str, Any]:
        """The chat body: system, earlier turns, then the user turn (text and image parts)."""
        if self.error is not None:
            raise InputError(self.error)
        messages: list[dict[str, Any]] = []
        system = self.system if self.system is not None else spec.system
        if system is not None:
            messages.append({"role": "system", "content": system})
        messages.extend({"role": role, "content": content} for role, content in self.messages)
        if self.images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": self.prompt}]
            parts.extend(
                {"type": "image_url", "image_url": {"url": _image_url(i, ref, media)}}
                for i, (ref, media) in enumerate(self.images)
            )
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": self.prompt})
        return spec.chat_body(self.model if self.model is not None else spec.model, messages)


def _image_url(i: int, ref: str, media: str | None) -> str:
    if media is None:
        return ref
    try:
        data = Path(ref).read_bytes()
    except OSError as exc:
        raise InputError(f"images[{i}]: cannot read {ref!r}: {exc.strerror or exc}") from None
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"


# --- checking the dtype ------------------------------------------------------------------------------


def _stringy(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Null, pl.Categorical) or isinstance(dtype, pl.Enum)


def check_dtype(dtype: pl.Struct, name: str, cfg: MapConfig) -> None:
    """Refuse a struct input whose shape is wrong, before any request (:class:`ConfigError`)."""
    fields = {f.name: f.dtype for f in dtype.fields}
    unknown = [f for f in fields if f not in FIELDS]
    shape = (
        f"llm.map takes a String column (cast it first, e.g. pl.col({name!r}).cast(pl.String)) or a struct "
        f"with the fields {', '.join(FIELDS)}"
    )
    if unknown:  # with a prompt field, an unknown one is a typo: the fields are the help, not a cast
        help_text = f"a struct input takes the fields {', '.join(FIELDS)}" if "prompt" in fields else shape
        raise ColumnTypeError(
            f"the struct input {name!r} has unknown field(s) {', '.join(map(repr, unknown))} "
            f"(dtype {dtype}); {help_text}"
        )
    if "prompt" not in fields:
        raise ColumnTypeError(
            f"the struct input {name!r} has no `prompt` field, the final user turn (dtype {dtype}); " + shape
        )
    for field in ("prompt", "system", "model"):
        if field in fields and not _stringy(fields[field]):
            raise ColumnTypeError(
                f"the struct field `{field}` of {name!r} has dtype {fields[field]}; it must be String"
            )
    images = fields.get("images")
    if images is not None and not (
        _stringy(images) or (isinstance(images, pl.List) and _stringy(images.inner))
    ):
        raise ColumnTypeError(
            f"the struct field `images` of {name!r} has dtype {images}; it must be String or List(String) "
            "(URLs or local file paths)"
        )
    messages = fields.get("messages")
    if messages is not None and messages != pl.Null:
        inner = messages.inner if isinstance(messages, pl.List) else None
        parts = {f.name: f.dtype for f in inner.fields} if isinstance(inner, pl.Struct) else None
        if parts is None or set(parts) != {"role", "content"} or not all(map(_stringy, parts.values())):
            raise ColumnTypeError(
                f"the struct field `messages` of {name!r} has dtype {messages}; it must be "
                "List(Struct({'role': String, 'content': String}))"
            )
    if cfg.worker is not None and set(fields) - {"prompt"}:
        raise ConfigError(
            "a worker takes one prompt string: a struct input with a worker may only have a `prompt` field "
            f"(got {', '.join(fields)})"
        )
    if cfg.model is None and cfg.worker is None and "model" not in fields:
        raise no_model_error()


def _normalised(series: pl.Series) -> pl.DataFrame:
    """Every field as its canonical dtype (missing ones null); a null struct row has a null prompt."""
    frame = series.struct.unnest()
    present = set(frame.columns)
    row_null = series.is_null()
    columns = []
    for field, dtype in FIELDS.items():
        if field not in present:
            columns.append(pl.lit(None, dtype=dtype).alias(field))
        elif field == "images" and not isinstance(frame.schema[field], pl.List):
            col = pl.col(field).cast(pl.String)
            columns.append(pl.when(col.is_null()).then(None).otherwise(pl.concat_list(col)).alias(field))
        elif field == "messages" and frame.schema[field] not in (dtype, pl.Null):
            turn = pl.struct(  # by name, not position: Struct{content, role} must not swap them
                pl.element().struct.field("role").cast(pl.String),
                pl.element().struct.field("content").cast(pl.String),
            )
            columns.append(pl.col(field).list.eval(turn).cast(dtype))
        else:
            columns.append(pl.col(field).cast(dtype))
    out = frame.select(columns)
    if row_null.any():
        out = out.with_columns(pl.when(row_null).then(None).otherwise(pl.col("prompt")).alias("prompt"))
    return out


# --- keys and requests -------------------------------------------------------------------------------


class _Images:
    """Image references of one call → what the key holds and what the request sends (files read once)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[Any, str | None, str | None]] = {}

    def resolve(self, i: int, ref: str) -> tuple[Any, tuple[str, str | None] | None, str | None]:
        """``(key part, (ref, media type or None), error)`` for one image reference."""
        if not ref:
            return {"empty": True}, None, f"images[{i}]: empty image path or URL"
        if ref.startswith(_URL_PREFIXES):
            part = ref if not ref.startswith("data:") else {"data_sha256": _sha256(ref.encode())}
            return part, (ref, None), None
        path = os.path.abspath(os.path.expanduser(ref[7:] if ref.startswith("file://") else ref))
        if path not in self._files:
            self._files[path] = _read_image(path, ref)
        digest, media, problem = self._files[path]
        if problem is not None:
            return {"unreadable": path}, None, f"images[{i}]: {problem}"
        return {"sha256": digest, "type": media}, (path, media), None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_image(path: str, ref: str) -> tuple[Any, str | None, str | None]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, None, f"cannot read {ref!r}: {exc.strerror or exc}"
    media = next((m for magic, m in _MAGIC if data.startswith(magic)), None)
    if media is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        media = "image/webp"
    if media is None:
        guessed = mimetypes.guess_type(path)[0]
        media = guessed if guessed is not None and guessed.startswith("image/") else None
    if media is None:
        return None, None, f"{ref!r} is not an image (PNG, JPEG, GIF or WebP expected)"
    return _sha256(data), media, None


def _turns(messages: list[Any] | None) -> tuple[tuple[tuple[str, str], ...], str | None]:
    out: list[tuple[str, str]] = []
    for i, m in enumerate(messages or ()):
        if m is None:
            return (), f"messages[{i}] is null"
        role, content = m["role"], m["content"]
        if role not in ROLES:
            return (), f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}"
        if content is None:
            return (), f"messages[{i}].content is null"
        out.append((role, content))
    return tuple(out), None


def _summary(ref: str) -> str:
    """An image reference as the store shows it (a ``data:`` URL by its header and size, not its bytes)."""
    if ref.startswith("data:"):
        return f"{ref.split(',', 1)[0]},… ({len(ref):,} characters)"
    return ref


class _Keys:
    """Key makers per (model, system): a row without images or turns keys like a plain call."""

    def __init__(self, spec: RequestSpec) -> None:
        self._spec = spec
        self._fingerprint = spec.fingerprint_template()
        self._plain: dict[tuple[str, str | None], KeyMaker] = {}

    def key(self, prompt: str, model: str, system: str | None, extra: Mapping[str, Any] | None) -> str:
        if extra is not None:
            return self._spec.key_maker_for(model, system, extra).key(prompt)
        maker = self._plain.get((model, system))
        if maker is None:
            if len(self._plain) >= 4096:  # a system prompt per row: no point keeping them all
                self._plain.clear()
            maker = self._plain[(model, system)] = KeyMaker(self._fingerprint(model, system))
        return maker.key(prompt)


class StructPrepared:
    """The parts :func:`prepare_struct` adds to a plain call's ``Prepared``."""

    __slots__ = ("columns", "keys", "payloads", "prompts", "row_keys")

    def __init__(
        self,
        keys: list[str],
        prompts: list[str],
        payloads: list[RowRequest | str],
        columns: dict[str, list[str | None]],
        row_keys: pl.Series,
    ) -> None:
        self.keys = keys
        self.prompts = prompts
        self.payloads = payloads
        self.columns = columns
        self.row_keys = row_keys


def _requests(unique: pl.DataFrame, cfg: MapConfig) -> Iterator[tuple[str, RowRequest, dict[str, Any]]]:
    """``(key, request, store columns)`` for every unique row, in order."""
    spec = request_spec(cfg)
    keys = _Keys(spec)
    images = _Images()
    for prompt, system, refs, messages, model in unique.select(list(FIELDS)).iter_rows():
        eff_model = model if model is not None else spec.model
        eff_system = system if system is not None else spec.system
        turns, error = _turns(messages)
        sent: list[tuple[str, str | None]] = []
        parts: list[Any] = []
        for i, ref in enumerate(r for r in refs or () if r is not None):
            part, image, problem = images.resolve(i, ref)
            parts.append(part)
            error = error or problem
            if image is not None:
                sent.append(image)
        extra: dict[str, Any] | None = None
        if turns or parts or error:
            extra = {"messages": [list(t) for t in turns], "images": parts}
            if error:
                extra["error"] = error
        request = RowRequest(
            prompt, system=system, model=model, messages=turns, images=tuple(sent), error=error
        )
        shown = None
        if messages or refs:
            shown = orjson.dumps(
                {"messages": messages or [], "images": [_summary(r) for r in refs or () if r is not None]}
            ).decode()
        yield (
            keys.key(prompt, eff_model, eff_system, extra),
            request,
            {"model": eff_model, "system": eff_system, "input": shown},
        )


def prepare_struct(series: pl.Series, cfg: MapConfig) -> StructPrepared:
    """Check a struct input; unique rows (on every field) with their keys, requests and store columns."""
    assert isinstance(series.dtype, pl.Struct)
    check_dtype(series.dtype, series.name, cfg)
    frame = _normalised(series)
    unique = frame.filter(pl.col("prompt").is_not_null()).unique(maintain_order=True)
    if cfg.model is None and cfg.worker is None:
        missing = unique.filter(pl.col("model").is_null()).height
        if missing:
            raise ConfigError(
                f"no model for {missing:,} distinct row(s) of {series.name!r}: their `model` is null and no "
                "model option is set; pass model='provider/name' (or set MODEL) for them"
            )
    keys: list[str] = []
    prompts: list[str] = []
    payloads: list[RowRequest | str] = []  # a row asking only what a plain call asks: its prompt
    columns: dict[str, list[str | None]] = {"model": [], "system": [], "input": []}
    seen: set[str] = set()
    per_unique: list[str] = []
    for key, request, stored in _requests(unique, cfg):
        per_unique.append(key)
        if key in seen:  # two rows that ask the same (e.g. system=null and system=<the option>)
            continue
        seen.add(key)
        keys.append(key)
        prompts.append(request.prompt)
        plain = not (request.images or request.messages or request.error) and request.system is None
        payloads.append(request.prompt if plain and request.model is None else request)
        for name, value in stored.items():
            columns[name].append(value)
    table = unique.with_columns(pl.Series("__key", per_unique, dtype=pl.String))
    row_keys = frame.join(table, on=list(FIELDS), how="left", nulls_equal=True, maintain_order="left")
    return StructPrepared(keys, prompts, payloads, columns, row_keys.get_column("__key").rename("key"))

"""A fast, deterministic, fault-injecting OpenAI-compatible chat-completions server for tests and demos.

The server runs ``aiohttp.web`` on its own event loop in a daemon thread bound to 127.0.0.1, so it
works from scripts, pytest and inside a running event loop (Jupyter). The object :func:`serve` yields
is a ``str`` equal to the base URL, so it can be passed directly as ``base_url``::

    from polars_llm import sim

    with sim.serve(latency=0.05, jitter=0.02, rate_limit=50, window=1.0) as server:
        ...  # point the client at base_url=server
        print(server.stats()["status_counts"])

>>> import json, urllib.request
>>> from polars_llm import sim
>>> with sim.serve() as server:
...     body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()
...     req = urllib.request.Request(server + "/chat/completions", data=body,
...                                  headers={"Content-Type": "application/json"})
...     answer = json.load(urllib.request.urlopen(req))
...     answer["choices"][0]["message"]["content"], server.stats()["ok"]
('m: olleh', 1)

Endpoints: ``POST /v1/chat/completions`` (also ``/chat/completions``), ``POST /v1/embeddings`` (also
``/embeddings``), ``GET /v1/models``, ``GET /stats`` and ``GET /v1/stats`` (``?per_prompt=0`` to leave out
the per-prompt counts), ``GET /requests`` (the last ``request_log`` request bodies, ``?limit=N``; also
``server.requests()``), ``POST /reset``, ``GET /config`` and ``POST /configure`` (JSON body of option
changes).

Content parts: a user message may be a list of ``{"type": "text"}`` and ``{"type": "image_url",
"image_url": {"url": ...}}`` parts (the URL an ``http(s)://`` or ``data:image/...;base64,`` URL, else 400);
the prompt is the text of its text parts, and an image counts ~85 prompt tokens.

Embeddings (``POST /v1/embeddings``, OpenAI's format; see ``polars_llm.sim._embeddings``): up to 2048
non-empty strings per request, ``dimensions`` honoured (default ``embedding_dimensions``, 64),
``encoding_format`` ``float`` or ``base64``; each vector is :func:`expected_embedding`. A marker in any
input applies to the whole request (``[[status:400]]`` makes every batch holding that input a 400).

Batch API (OpenAI's protocol, for ``mode="batch"``): ``POST /v1/files`` (multipart, ``purpose=batch``),
``GET /v1/files/{id}`` and ``/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel`` and ``GET /v1/batches``. A batch finishes ``batch_seconds`` after it was
created (default 0: at once; ``None``: when ``server.finish_batches(outcome)`` is called) and ends as
``batch_outcome`` (``completed``, ``expired`` — the first ``batch_done_share`` answered, the rest
``batch_expired`` in the error file — or ``failed``); a cancel ends it ``cancelled`` at the next read. Its
requests are answered like online ones (same markers) with ``usage.cost`` at ``batch_price_factor``
(0.5) of the online cost, output lines shuffled; ``[[batch_omit]]`` leaves a request out of both files.
``batch_api=False`` answers 404 there, like a provider without one. ``server.batches()`` lists the batches;
``stats()["batch"]`` counts ``uploads``, ``batches_created``, ``batch_requests``, ``per_prompt``, …
See :mod:`polars_llm.sim._batches`.

Answers (deterministic, no randomness):
    * the prompt is the last ``user`` message; system (and ``developer``) messages are joined;
    * plain text is :func:`expected_text`: ``f"{model}: {prompt[::-1]}"``, or
      ``f"{model} [{system}]: {prompt[::-1]}"`` with a system prompt;
    * with ``response_format={"type": "json_schema", ...}`` the content is compact JSON of
      :func:`expected_json` — an instance of the schema seeded by ``(model, prompt)`` that reads the
      prompt: an ``enum`` takes the label the prompt names, a boolean is true when the prompt holds a
      keyword of the system prompt's ``Condition:`` line, a field ``name`` takes a ``name: value``
      written in the prompt, and a packed request (``{"items": [...]}`` against one ``answers`` array of
      exactly N) gets N answers, each the one its item would get alone;
      ``{"type": "json_object"}`` gives ``{"model": ..., "answer": expected_text(...)}``;
    * :func:`expected_content` returns the exact ``message.content`` string for any of these;
    * ``usage`` has ``prompt_tokens`` (all message text), ``completion_tokens`` (both
      ``max(1, len(text) // 4)``, see :func:`count_tokens`), ``total_tokens`` and ``cost`` in USD
      (``prompt_price`` / ``completion_price`` per token; left out with ``report_cost=False``), and
      ``completion_tokens_details.reasoning_tokens`` / ``prompt_tokens_details.cached_tokens`` when
      ``reasoning_ratio`` / ``cached_ratio`` are set (reasoning tokens are part of completion tokens);
    * ``GET /v1/models`` lists ``models`` with OpenRouter-style ``pricing`` (USD per token, as strings)
      and ``top_provider.max_completion_tokens`` (``max_output``);
    * an answer longer than the request's ``max_tokens`` is cut to ``max_tokens * 4`` characters with
      ``finish_reason="length"`` (``honor_max_tokens=False`` turns that off).

Order of checks: ``api_key`` (401) → ``fail_mode`` → body validation (400) → ``burst_429`` → the
request window (``rate_limit``) → the token window (``tpm_limit``) → markers → global fault rates →
``latency`` ± ``jitter`` → the answer. Rejected requests (401/402/403/400/429 from the limits) do not
count toward the windows, nor as attempts for ``:N`` markers, and are answered without latency.

Options (:class:`SimConfig`; change live with ``server.configure(**changes)``):
    ``latency``, ``jitter`` (seconds; uniform ± jitter), ``rate_limit`` requests per ``window``
    seconds in ``limit_shape`` ``"sliding"`` (a true sliding log, the default), ``"fixed"`` (fixed
    windows) or ``"bucket"`` (a token bucket of ``bucket_burst``, default ``rate_limit``, refilled at
    ``rate_limit / window`` per second); refusals are 429 with ``Retry-After`` — integer seconds, ceil,
    ≥ 1 — and ``retry-after-ms`` until one more fits; ``limit_headers`` (``"none"``, ``"429"`` — the
    default, on refusals only — or ``"all"``, on every answer) in ``limit_header_style`` (``"openai"``,
    ``"openrouter"``, ``"anthropic"``, ``"ietf"``; see :mod:`polars_llm.sim._limiter`); all of these
    can change live (``server.configure(rate_limit=25)``), ``tpm_limit`` tokens
    per ``tpm_window`` seconds (prompt tokens on admission, completion tokens on answer; a single
    request above the limit gets 413), ``error_rate`` (500/502/503 from ``error_statuses``; 503 carries
    ``Retry-After: error_retry_after``), ``malformed_rate`` (200 with a non-JSON body),
    ``truncated_rate`` (the JSON body cut in half; ``Content-Length`` matches the cut body, or with
    ``truncate_close=True`` announces the full length and the connection is closed early),
    ``error_in_200_rate`` (200 with ``{"error": {"code": 502, ...}}`` like OpenRouter),
    ``empty_choices_rate`` (``"choices": []``), ``stall_rate`` (wait ``stall_seconds``, default 30, before
    answering), ``reset_rate`` (TCP reset, no response), ``burst_429`` (every request 429 with
    ``Retry-After: burst_retry_after`` — none when 0 — for ``burst_seconds`` from when it is switched
    on; see ``server.burst()``), ``burst_requests`` (the first N chat requests 429, as in a burst,
    counted from start, ``reset()`` or the ``configure()`` that sets it), ``fail_mode``
    (``None``/401/402/403 for every request; 402 is "Insufficient credits" without ``Retry-After``),
    ``api_key`` (require ``Authorization: Bearer``), ``seed`` (the RNG of fault rates and jitter),
    ``prompt_price``, ``completion_price``, ``models``
    (listed by ``/v1/models``; any model name is accepted), ``host``, ``port`` (0 = free port),
    ``backlog``, ``shutdown_timeout``, ``embedding_dimensions`` (vector length when an embeddings
    request gives no ``dimensions``; 64), ``request_log`` (request bodies kept for ``server.requests()``;
    1000, 0 keeps none).

Markers in the user prompt (``:N`` = only the first N attempts of this exact ``(model, prompt,
response_format present?)``; without it, always; the first active marker wins):
    ``[[status:CODE]]`` / ``[[status:CODE:N]]``  answer with that HTTP status (429 carries
    ``Retry-After: 1``; 503 ``error_retry_after``);
    ``[[flaky:CODE:N]]``  CODE for the first N attempts (default N = 1), then success;
    ``[[flaky429:N]]``  429 with ``Retry-After: 1`` for the first N attempts (default 1);
    ``[[content_filter]]``  ``finish_reason="content_filter"``, ``content`` null;
    ``[[length]]``  ``finish_reason="length"``, the content cut in half;
    ``[[bad_json]]``  with a response_format, content that is not JSON (text answers unaffected);
    ``[[wrong_schema]]``  with a response_format, valid JSON that does not match the schema;
    ``[[malformed]]``, ``[[truncated]]``, ``[[error200]]``, ``[[empty]]``, ``[[stall]]``,
    ``[[reset]]``  the fault of the same name as the rates above;
    ``[[delay:SECONDS]]``  extra latency for this prompt (always; combines with the others);
    hostile answers (see :mod:`polars_llm.sim._hostile`): ``[[content_parts]]``,
    ``[[content_number]]``, ``[[content_object]]``, ``[[content_image]]``, ``[[refusal]]``,
    ``[[length_valid]]``, ``[[choices_null]]``, ``[[message_null]]``, ``[[usage_string]]``,
    ``[[usage_negative]]``, ``[[html]]``, ``[[empty_body]]``, ``[[short_body]]``, ``[[stall_body]]``,
    ``[[huge]]``, ``[[huge_chunked]]``, ``[[credits_wait]]`` (all with an optional ``:N``), and with a
    value first: ``[[retry_after:VALUE:N]]``, ``[[retry_after_ms:VALUE:N]]`` (a 429 whose hint is VALUE
    verbatim; N defaults to 1), ``[[credits:SOURCE]]``, ``[[redirect:CODE]]``, ``[[html_error:CODE]]``.
    Faulted responses carry an ``X-Sim-Fault`` header naming the fault (as counted in ``faults``).

Counters (``server.stats()``, thread-safe; ``GET /stats``): ``requests`` (every chat request),
``ok`` (well-formed completions, including ``content_filter``/``length``/``bad_json``/stalled ones),
``status_counts`` (``{"200": n, "429": n, ...}``; resets have no status), ``per_prompt``
(``{prompt: requests}``), ``unique_prompts``, ``in_flight``, ``max_in_flight``, ``cancelled``,
``tokens_in``/``tokens_out``/``cost`` (of ``ok`` answers), ``faults`` (``{"rate_limit": n,
"status_500": n, "error": n, "truncated": n, ...}``) and ``burst_active``. ``server.reset()`` zeroes
them and also forgets ``:N`` attempts and the rate-limit windows.

Command line: ``python -m polars_llm.sim --port 8000 --latency 0.1`` prints the base URL and serves
until Ctrl-C (also ``polars-llm sim``).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ..exceptions import ConfigError
from ._options import BATCH_OUTCOMES, SimConfig
from ._outputs import count_tokens, expected_content, expected_json, expected_text
from ._server import SimServer, serve, start
from ._vectors import expected_embedding
from ._wire import parse_markers

__all__ = [
    "SimConfig",
    "SimServer",
    "add_arguments",
    "count_tokens",
    "expected_content",
    "expected_embedding",
    "expected_json",
    "expected_text",
    "main",
    "parse_markers",
    "run_from_args",
    "serve",
    "start",
]

_DEFAULTS = SimConfig()
_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "port to listen on (0 = any free port)",
    "backlog": "listen backlog",
    "latency": "seconds before each answer",
    "jitter": "uniform ± seconds added to latency",
    "rate_limit": "requests per --window (sliding window; 429 beyond)",
    "window": "seconds of the request window",
    "limit_shape": "shape of the request cap: sliding (log), fixed (windows) or bucket (token bucket)",
    "bucket_burst": "size of the token bucket (default: --rate-limit)",
    "limit_headers": "send rate-limit headers on: none, 429 (refusals only) or all (successes too)",
    "limit_header_style": "rate-limit header convention: openai, openrouter, anthropic or ietf",
    "refusal_retry_after": "send Retry-After on rate-limit refusals",
    "tpm_limit": "tokens per --tpm-window (429 beyond)",
    "tpm_window": "seconds of the token window",
    "error_rate": "fraction answered with one of --error-statuses",
    "error_statuses": "statuses used by --error-rate",
    "error_retry_after": "Retry-After seconds on 503 answers ('none' for no header)",
    "malformed_rate": "fraction answered 200 with a non-JSON body",
    "truncated_rate": "fraction answered with the body cut mid-JSON",
    "truncate_close": "truncated bodies announce the full length and close the connection",
    "error_in_200_rate": "fraction answered 200 with an error object (like OpenRouter)",
    "empty_choices_rate": "fraction answered with empty choices",
    "stall_rate": "fraction that wait --stall-seconds before answering",
    "stall_seconds": "seconds a stalled request waits",
    "reset_rate": "fraction whose connection is reset without an answer",
    "burst_429": "answer everything 429 for --burst-seconds after start",
    "burst_seconds": "length of the 429 burst",
    "burst_retry_after": "Retry-After seconds during the burst (0: no Retry-After header)",
    "burst_requests": "answer the first N chat requests 429 (counted from start, reset or configure)",
    "fail_mode": "answer every request with this status",
    "seed": "seed of the fault and jitter RNG",
    "api_key": "require 'Authorization: Bearer KEY'",
    "prompt_price": "USD per prompt token",
    "completion_price": "USD per completion token",
    "report_cost": "report usage.cost (off: the client must price tokens itself)",
    "reasoning_ratio": "share of completion tokens reported as reasoning tokens",
    "cached_ratio": "share of prompt tokens reported as cached",
    "max_output": "maximum completion tokens listed by /v1/models ('none' to list none)",
    "honor_max_tokens": "cut answers longer than max_tokens (finish_reason 'length')",
    "models": "model names listed by /v1/models",
    "shutdown_timeout": "seconds to let running requests finish on exit",
    "batch_api": "serve the files and batches endpoints (--no-batch-api: 404, like a provider without one)",
    "batch_seconds": "seconds a batch takes to finish ('none': until finish_batches())",
    "batch_outcome": "how a batch ends: completed, expired or failed",
    "batch_done_share": "share of an expired or cancelled batch's requests that were answered",
    "batch_price_factor": "batch usage cost as a share of the online cost",
    "batch_max_requests": "requests per batch input file at most (more fails the batch)",
    "batch_max_bytes": "bytes per uploaded file at most (more is refused with 413)",
    "embedding_dimensions": "vector length of /embeddings answers when the request gives no dimensions",
    "request_log": "request bodies kept for GET /requests (0: none)",
}


def _optional(kind: type) -> Any:
    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else kind(text)

    convert.__name__ = kind.__name__
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one ``--option`` per :class:`SimConfig` field (plus ``--duration``) to ``parser``."""
    for f in dataclasses.fields(SimConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(_DEFAULTS, f.name)
        text = _HELP.get(f.name, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif f.name == "error_statuses":
            parser.add_argument(flag, type=int, nargs="+", default=list(default), help=text)
        elif f.name == "models":
            parser.add_argument(flag, nargs="+", default=list(default), help=text)
        elif f.name == "fail_mode":
            parser.add_argument(flag, type=int, choices=(401, 402, 403), default=None, help=text)
        elif f.name in ("rate_limit", "tpm_limit", "bucket_burst", "max_output"):
            parser.add_argument(flag, type=_optional(int), default=default, help=text)
        elif f.name in ("error_retry_after", "batch_seconds"):
            parser.add_argument(flag, type=_optional(float), default=default, help=text)
        elif f.name == "batch_outcome":
            parser.add_argument(flag, choices=BATCH_OUTCOMES, default=default, help=text)
        elif f.name == "api_key":
            parser.add_argument(flag, default=None, help=text)
        else:
            kind = type(default)
            parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default})")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)"
    )
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Serve with the options parsed by :func:`add_arguments` until Ctrl-C/SIGTERM or ``--duration``."""
    options: dict[str, Any] = {}
    for f in dataclasses.fields(SimConfig):
        value = getattr(args, f.name, getattr(_DEFAULTS, f.name))
        if isinstance(value, list):
            value = tuple(value)
        options[f.name] = value
    try:
        server = SimServer(**options)
    except (ConfigError, OSError) as exc:
        print(f"polars-llm sim: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        # explicit handlers: SIGINT may be inherited as "ignored" (background jobs) and SIGTERM is quiet
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        print(server.base_url, flush=True)
        done.wait(getattr(args, "duration", None))
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stats = server.stats(per_prompt=False)
    print(
        f"served {stats['requests']} chat requests ({stats['ok']} ok, statuses {stats['status_counts']})",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m polars_llm.sim [options]``: print the base URL and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m polars_llm.sim",
        description="Run the polars_llm OpenAI-compatible simulator (see `polars_llm.sim` docs for markers).",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))

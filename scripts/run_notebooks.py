"""Build the example notebooks from the cell sources below (percent format, as jupytext writes it),
execute them in a real kernel, and write them with their outputs.

    uv run python scripts/run_notebooks.py              # regenerate every notebook in notebooks/
    uv run python scripts/run_notebooks.py resume       # only notebooks/resume.ipynb
    uv run python scripts/run_notebooks.py --check      # execute into a temp dir, write nothing

The notebooks run offline against ``polars_llm.sim`` (each starts its own simulator in a cell) with a
kernel running *this* interpreter (a kernelspec written to a temp dir; no ``ipykernel install`` needed),
in a scratch working directory, so no cache file lands in the repository. A code cell flagged
``interrupt_after_requests=N`` (cell metadata ``{"polars_llm": {"interrupt_after_requests": N}}``) is
interrupted the way the ■ button does it (``interrupt_kernel``, SIGINT) once the notebook's simulator
has received N requests; its ``KeyboardInterrupt`` output is kept (tag ``raises-exception``).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import html
import json
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
KERNEL_NAME = "polars-llm-notebooks"
CELL_TIMEOUT = 120
USER_KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

# --- cell sources (percent format: `# %%` starts a code cell, `# %% [markdown]` a markdown cell;
# --- flags after `# %%`: raises-exception, interrupt_after_requests=N) ----------------------------------

QUICKSTART = """\
# %% [markdown]
# # polars_llm quickstart
#
# Map a text column through an LLM, watch the progress bar, inspect `result`/`status`, re-run for free,
# write Parquet.
#
# Everything here runs offline: `polars_llm.sim` is a local OpenAI-compatible server with real HTTP,
# latency and usage/cost accounting. For a real provider drop `base_url`/`api_key` and set
# `OPENROUTER_API_KEY` (and `MODEL`) in the environment or `.env`.
# %%
from pathlib import Path

import polars as pl

import polars_llm  # registers the .llm namespace on Expr, Series, DataFrame and LazyFrame
from polars_llm import sim

server = sim.start(latency=0.02)  # stand-in for the provider; server.stop() at the end
CACHE = Path(".polars_llm/quickstart.duckdb")  # every answer is kept here (DuckDB)
for stale in CACHE.parent.glob(CACHE.name + "*"):
    stale.unlink()  # start fresh so this demo always sends its requests
OPTIONS = {"base_url": server, "api_key": "sk-sim", "cache": CACHE}
# %% [markdown]
# A frame of product reviews (a few repeat, one is missing, and one carries a simulator marker that
# makes the server answer HTTP 400 for it).
# %%
adjectives = ["great", "noisy", "fragile", "perfect", "too small", "easy to clean", "overpriced"]
texts = [f"Review {i}: the blender is {adjectives[i % 7]}." for i in range(300)]
texts += texts[:20] + [None, "Review 999: [[status:400]] unreadable"]
reviews = pl.DataFrame({"id": range(len(texts)), "text": texts})
reviews.tail(3)
# %% [markdown]
# ## Map a column
#
# `df.llm.map(column, model, ...)` adds `result` and `status`. Identical prompts are sent once; the bar
# shows done / failed / retrying, requests per minute, tokens, cost.
# %%
out = reviews.llm.map("text", "demo-model", system="Summarise in five words.", **OPTIONS)
out.head()
# %%
out.group_by("status").len().sort("status")
# %% [markdown]
# `status` is `done`, `failed` (the answer is `null`; the error is kept in the store) or `null` (a null
# prompt: nothing was sent).
# %%
out.filter(pl.col("status") != "done")
# %% [markdown]
# ## Re-running costs nothing
#
# Every finished answer is in the cache, so running the same cell again sends only what is not `done`
# yet: here just the row that failed.
# %%
before = server.stats()["requests"]
again = reviews.llm.map("text", "demo-model", system="Summarise in five words.", **OPTIONS)
print("requests sent by the re-run:", server.stats()["requests"] - before)
again.equals(out)
# %% [markdown]
# ## Expressions, lazy frames, `await`
#
# The same call is an expression (a `Struct` column) that works in lazy queries, and an awaitable for
# top-level `await` in a cell.
# %%
summary = pl.col("text").llm.map("demo-model", system="Summarise in five words.", **OPTIONS)
(
    reviews.lazy()
    .with_columns(summary.alias("llm"))
    .unnest("llm")
    .filter(pl.col("status") == "done")
    .select("id", "result")
    .collect()
    .head(3)
)
# %%
awaited = await reviews.llm.amap("text", "demo-model", system="Summarise in five words.", **OPTIONS)
awaited.equals(out)
# %% [markdown]
# ## Write Parquet
# %%
import tempfile

path = Path(tempfile.mkdtemp()) / "reviews_summarised.parquet"
out.write_parquet(path)
pl.read_parquet(path).schema
# %%
stats = server.stats(per_prompt=False)
tokens = stats["tokens_in"] + stats["tokens_out"]
print(f"{stats['requests']} requests, {tokens} tokens, ${stats['cost']:.4f}")
server.stop()
"""

STRUCTURED = """\
# %% [markdown]
# # Structured extraction
#
# A Pydantic `response_model` is sent as a JSON schema; every answer is validated against it and
# `result` becomes a Polars `Struct` shaped like the model, ready to filter and unnest.
#
# Everything here runs offline: `polars_llm.sim` is a local OpenAI-compatible server with real HTTP,
# latency and usage/cost accounting. For a real provider drop `base_url`/`api_key` and set
# `OPENROUTER_API_KEY` (and `MODEL`) in the environment or `.env`.
# %%
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl
from pydantic import BaseModel, Field

import polars_llm
from polars_llm import sim

server = sim.start(latency=0.02)
CACHE = Path(".polars_llm/structured.duckdb")
for stale in CACHE.parent.glob(CACHE.name + "*"):
    stale.unlink()  # start fresh
OPTIONS = {"base_url": server, "api_key": "sk-sim", "cache": CACHE}
# %%
class Ticket(BaseModel):
    category: Literal["billing", "bug", "feature", "other"]
    urgency: int = Field(ge=1, le=5, description="5 = drop everything")
    product: str
    needs_reply: bool
    tags: list[str]


messages = [f"Ticket {i}: my order #{1000 + i} {problem}" for i, problem in enumerate(
    ["was charged twice", "crashes on start", "could use dark mode", "arrived late"] * 50
)]
messages.append("Ticket 999: [[wrong_schema]] the model answers JSON that does not fit")
tickets = pl.DataFrame({"message": messages})
len(tickets)
# %%
out = tickets.llm.map(
    "message", "demo-model", response_model=Ticket, system="Extract the ticket fields.",
    max_attempts=2,  # an answer that does not validate is asked for once more, then marked failed
    **OPTIONS,
)
out.schema
# %%
out.head(3)
# %% [markdown]
# ## Filter on fields, unnest into columns
#
# `category` is a `Literal` of labels, so its column is a `pl.Enum`: grouping, sorting (in the order the
# labels are declared) and comparing are cheap, and a label outside the list cannot appear.
# %%
urgent = out.filter(pl.col("result").struct.field("urgency") >= 4)
urgent.unnest("result").select("message", "category", "urgency", "needs_reply").head()
# %%
(
    out.filter(pl.col("status") == "done")
    .unnest("result")
    .group_by("category")
    .agg(pl.len().alias("tickets"), pl.col("urgency").mean().alias("mean_urgency"))
    .sort("category")
)
# %%
done = out.filter(pl.col("status") == "done").unnest("result")
done.explode("tags").group_by("tags").len().sort("tags")
# %% [markdown]
# ## An answer that does not fit the schema
#
# It is not dropped silently: the row is `failed`, `result` is null, and the store keeps the validation
# error together with the raw model output.
# %%
out.filter(pl.col("status") == "failed")
# %%
with duckdb.connect(str(CACHE), read_only=True) as con:
    failed = con.sql("SELECT error_kind, error FROM requests WHERE status = 'failed'").pl()
print(failed["error_kind"][0])
print(failed["error"][0][:300])
# %%
server.stop()
"""

RESUME = '''\
# %% [markdown]
# # Interrupt a long cell, re-run it, pay only for the rest
#
# Every finished answer is written to a DuckDB file while the run goes on. Interrupting the kernel (■,
# or `I I`) stops the run within a fraction of a second, flushes what finished and leaves no thread
# behind; running the cell again sends only the rows that are not done.
#
# Everything here runs offline: `polars_llm.sim` is a local OpenAI-compatible server with real HTTP,
# latency and usage/cost accounting. For a real provider drop `base_url`/`api_key` and set
# `OPENROUTER_API_KEY` (and `MODEL`) in the environment or `.env`.
# %%
from pathlib import Path

import duckdb
import polars as pl

import polars_llm
from polars_llm import sim

server = sim.start(latency=0.02)  # a slowish provider: ~8 requests in flight, 20 ms each
CACHE = Path(".polars_llm/resume.duckdb")
for stale in CACHE.parent.glob(CACHE.name + "*"):
    stale.unlink()  # start fresh
OPTIONS = {"base_url": server, "api_key": "sk-sim", "cache": CACHE}

docs = pl.DataFrame({"text": [f"Document {i}: quarterly notes, section {i % 17}" for i in range(2000)]})
unique_prompts = docs["text"].n_unique()
unique_prompts
# %% [markdown]
# ## 1. Start a long run and interrupt it
#
# Run the next cell and press ■ after a second or two. (When this notebook was generated, the script
# pressed it for you: it interrupted the kernel once the simulator had received 400 requests, the same
# SIGINT the button sends.)
# %% raises-exception interrupt_after_requests=400
out = docs.llm.map("text", "demo-model", system="One-line summary.", concurrency=8, **OPTIONS)
# %% [markdown]
# A plain `KeyboardInterrupt`; the bar turned red and was closed. What finished is in the store, the
# rest is `pending`:
# %%
sent_first = server.stats()["requests"]
print("requests sent before the interrupt:", sent_first)
with duckdb.connect(str(CACHE), read_only=True) as con:
    print(con.sql("SELECT status, count(*) AS rows FROM requests GROUP BY status ORDER BY status"))
# %% [markdown]
# ## 2. Run the same cell again
#
# The bar starts at the cached rows; only the rest is sent.
# %%
out = docs.llm.map("text", "demo-model", system="One-line summary.", concurrency=8, **OPTIONS)
# %%
total = server.stats()["requests"]
print(f"unique prompts: {unique_prompts}, requests over both runs: {total}")
print(f"sent twice (in flight when interrupted): {total - unique_prompts}")
out["status"].value_counts()
# %% [markdown]
# ## 3. Look into the store with SQL
#
# The cache is an ordinary DuckDB file (open it while no run is using it). One row per request, keyed by
# a content hash of endpoint, model, system prompt, parameters and prompt; no API key is stored.
# %%
with duckdb.connect(str(CACHE), read_only=True) as con:
    print(con.sql("""
        SELECT status, count(*) AS rows, sum(attempts) AS attempts,
               sum(tokens_in + tokens_out) AS tokens, round(sum(cost), 6) AS cost_usd
        FROM requests GROUP BY status
    """))
    print(con.sql("SELECT key, prompt, result FROM requests ORDER BY finished_at LIMIT 3"))
# %%
server.stop()
'''

NOTEBOOKS: dict[str, str] = {"quickstart": QUICKSTART, "structured_extraction": STRUCTURED, "resume": RESUME}


# --- building and executing -------------------------------------------------------------------------------


def build(source: str) -> NotebookNode:
    """A fresh notebook (no outputs) from percent-format ``source``."""
    nb = new_notebook()
    for block in re.split(r"^# %%", source, flags=re.MULTILINE)[1:]:
        header, _, body = block.partition("\n")
        body = body.strip("\n")
        flags = header.split()
        if flags == ["[markdown]"]:
            text = "\n".join(
                line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines()
            )
            nb.cells.append(new_markdown_cell(_unwrap_markdown(text)))
            continue
        metadata: dict[str, Any] = {}
        for flag in flags:
            if flag == "raises-exception":
                metadata["tags"] = ["raises-exception"]
            elif flag.startswith("interrupt_after_requests="):
                metadata["polars_llm"] = {"interrupt_after_requests": int(flag.partition("=")[2])}
            else:
                raise ValueError(f"unknown cell flag {flag!r}")
        nb.cells.append(new_code_cell(body, metadata=metadata))
    nb.metadata["kernelspec"] = dict(USER_KERNELSPEC)  # what readers run it with, not our test kernel
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives small diffs
    return nb


def _unwrap_markdown(text: str) -> str:
    """Join the lines of each paragraph (the sources wrap them to fit the line length)."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        p if p.lstrip().startswith(("-", "*", "|")) else " ".join(p.split("\n")) for p in paragraphs
    )


_SPEC_ROOT = tempfile.TemporaryDirectory(prefix="polars-llm-kernels-")  # removed at exit


def kernel_manager() -> AsyncKernelManager:
    """A kernel running this interpreter, via a kernelspec in a temp dir (nothing installed)."""
    spec_dir = Path(_SPEC_ROOT.name) / KERNEL_NAME
    spec_dir.mkdir(exist_ok=True)
    argv = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    argv.append("--HistoryManager.hist_file=:memory:")  # no history database in the user's home
    spec = {"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[_SPEC_ROOT.name])
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


async def _kernel_value(client: NotebookClient, expression: str) -> Any:
    assert client.kc is not None
    reply = await client.kc.execute(
        "", silent=True, user_expressions={"v": expression}, reply=True, timeout=30
    )
    value = reply["content"]["user_expressions"]["v"]
    if value["status"] != "ok":
        raise RuntimeError(f"cannot evaluate {expression!r} in the kernel: {value}")
    return ast.literal_eval(value["data"]["text/plain"])


def _sim_requests(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats?per_prompt=0", timeout=5) as response:
        return int(json.load(response)["requests"])


async def _interrupt_after(client: NotebookClient, cell_task: asyncio.Task[Any], url: str, n: int) -> None:
    """Interrupt the kernel once the simulator at ``url`` has received ``n`` requests."""
    assert client.km is not None
    deadline = time.monotonic() + CELL_TIMEOUT
    while await asyncio.to_thread(_sim_requests, url) < n:
        if cell_task.done():
            raise RuntimeError(f"the cell finished before {n} requests were sent; nothing to interrupt")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the simulator did not see {n} requests within {CELL_TIMEOUT} s")
        await asyncio.sleep(0.02)
    await client.km.interrupt_kernel()


async def execute(nb: NotebookNode, cwd: Path) -> NotebookNode:
    """Execute ``nb`` in place with a fresh kernel whose working directory is ``cwd``; returns it."""
    client = NotebookClient(
        nb,
        km=kernel_manager(),
        timeout=CELL_TIMEOUT,
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    async with client.async_setup_kernel(cleanup_kc=True):
        assert client.kc is not None
        info = await client.kc.kernel_info(reply=True, timeout=30)
        nb.metadata["language_info"] = info["content"]["language_info"]
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            n = cell.metadata.get("polars_llm", {}).get("interrupt_after_requests")
            if n is None:
                await client.async_execute_cell(cell, index)
                continue
            url = await _kernel_value(client, "str(server.url)")
            task = asyncio.ensure_future(client.async_execute_cell(cell, index))
            try:
                await _interrupt_after(client, task, url, n)
            finally:
                await task
            errors = [o for o in cell.outputs if o.output_type == "error"]
            if not errors or errors[0].ename != "KeyboardInterrupt":
                raise RuntimeError(f"cell {index} was interrupted but shows {errors or 'no error'}")
        client.set_widgets_metadata()
    return nb


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _bar_text(state: dict[str, Any], model_id: str) -> str | None:
    """A tqdm widget's final look as text (``label |████  | n/total [postfix]``), from saved state."""
    try:
        children = state[model_id]["state"]["children"]
        left, bar, right = (state[c.removeprefix("IPY_MODEL_")]["state"] for c in children)
    except (KeyError, ValueError, AttributeError):
        return None
    total = bar.get("max") or 0
    filled = min(10, round(10 * bar.get("value", 0) / total)) if total else 0
    text = f"{html.unescape(left.get('value', ''))}|{'█' * filled}{' ' * (10 - filled)}| "
    text += html.unescape(right.get("value", "")).strip()
    text = text.replace("\u2007", " ")  # tqdm pads its HTML with figure spaces
    return text + (" (stopped)" if bar.get("bar_style") == "danger" else "")


def tidy(nb: NotebookNode) -> NotebookNode:
    """Make outputs portable: no checkout paths in tracebacks; progress widgets' plain text shows the
    final bar (what GitHub and other static viewers print) instead of the empty bar it started as."""
    prefix = str(ROOT) + "/"
    state = nb.metadata.get("widgets", {}).get(_WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                output.traceback = [line.replace(prefix, "") for line in output.traceback]
            elif output.output_type == "stream":
                output.text = output.text.replace(prefix, "")
            elif _WIDGET_VIEW in output.get("data", {}):
                text = _bar_text(state, output.data[_WIDGET_VIEW]["model_id"])
                if text is not None:
                    output.data["text/plain"] = text
    return nb


def errors_of(nb: NotebookNode) -> list[str]:
    """``ename: evalue`` of every error output in cells not tagged ``raises-exception``."""
    found = []
    for cell in nb.cells:
        if "raises-exception" in cell.metadata.get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append(f"{output.ename}: {_ANSI.sub('', output.evalue)}")
    return found


def run(name: str, cwd: Path) -> NotebookNode:
    """Build and execute the notebook ``name`` in ``cwd``; raise if a cell failed unexpectedly."""
    nb = asyncio.run(execute(build(NOTEBOOKS[name]), cwd))
    problems = errors_of(nb)
    if problems:
        raise RuntimeError(f"{name}.ipynb: unexpected errors: {problems}")
    return tidy(nb)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"notebooks to run: {', '.join(NOTEBOOKS)} (default: all)")
    parser.add_argument("--check", action="store_true", help="execute only; do not write notebooks/")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        parser.error(f"unknown notebook(s): {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}")
    for name in args.names or list(NOTEBOOKS):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"polars-llm-{name}-") as scratch:
            nb = run(name, Path(scratch))
        took = time.monotonic() - started
        if args.check:
            print(f"{name}.ipynb: ok ({took:.1f} s)")
            continue
        NOTEBOOK_DIR.mkdir(exist_ok=True)
        nbformat.write(nb, NOTEBOOK_DIR / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb ({took:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

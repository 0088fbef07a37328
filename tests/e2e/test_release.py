"""What a user installing the release meets: its version, the other `polars-llm` project, refused options.

The import-time checks run in a child interpreter (a fresh ``import polars_llm``), with the other project
faked by a ``polars_llm-0.4.0.dist-info`` folder on ``PYTHONPATH`` (what ``pip install polars-llm`` leaves).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import polars_llm
from polars_llm import ConfigError, MapConfig

SRC = Path(polars_llm.__file__).resolve().parents[1]


def _child(code: str, *, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (path, SRC) if p is not None)
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def test_version_comes_from_the_installed_distribution() -> None:
    assert polars_llm.__version__ == importlib.metadata.version("polars-llm-map")
    assert "__version__" in polars_llm.__all__


def test_a_clean_environment_imports_without_a_conflict_warning() -> None:
    done = _child("import polars_llm")
    assert "NamespaceConflictWarning" not in done.stderr


def test_the_other_polars_llm_distribution_is_named_at_import(tmp_path: Path) -> None:
    info = tmp_path / "polars_llm-0.4.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: polars-llm\nVersion: 0.4.0\n")
    done = _child("import polars_llm", path=tmp_path)
    assert "NamespaceConflictWarning" in done.stderr
    assert "'polars-llm' 0.4.0 (another project) is installed too" in done.stderr
    assert "pip uninstall polars-llm polars-llm-map" in done.stderr


def test_a_foreign_llm_namespace_is_named_then_replaced() -> None:
    code = (
        "import polars as pl\n"
        "@pl.api.register_expr_namespace('llm')\n"
        "class Other:\n"
        "    def __init__(self, expr): pass\n"
        "import polars_llm\n"
        "print(type(pl.col('x').llm).__module__)\n"
    )
    done = _child(code)
    assert "NamespaceConflictWarning" in done.stderr
    assert "an `llm` namespace from '__main__' was registered on Polars before polars_llm's" in done.stderr
    assert done.stdout.strip().startswith("polars_llm.")


def test_openai_transport_without_the_sdk_is_a_config_error_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['openai'] = None\n"
        "from polars_llm import MapConfig, ConfigError\n"
        "try:\n"
        "    MapConfig(model='m', api_key='sk-x', transport='openai', cache=None)\n"
        "except ConfigError as e:\n"
        "    print('refused:', e)\n"
        "MapConfig(model='m', api_key='sk-x', cache=None)\n"
        "print('default ok', 'openai' in sys.modules and sys.modules['openai'] is not None)\n"
    )
    done = _child(code)
    assert "refused: transport='openai' needs the official SDK" in done.stdout
    assert "polars-llm-map[openai]" in done.stdout
    assert "default ok False" in done.stdout


def test_a_synchronous_worker_is_refused_before_any_request() -> None:
    def shout(prompt: str) -> str:
        return prompt.upper()

    with pytest.raises(ConfigError, match="'shout' is not an `async def` function"):
        pl.DataFrame({"p": ["a"]}).llm.map("p", worker=shout, cache=None, progress=False)


def test_async_callables_are_accepted_as_workers() -> None:
    class Shout:
        async def __call__(self, prompt: str) -> str:
            return prompt.upper()

    async def shout(prompt: str) -> str:
        return prompt.upper()

    for worker in (Shout(), shout):
        out = pl.DataFrame({"p": ["a"]}).llm.map("p", worker=worker, cache=None, progress=False)
        assert out["result"].to_list() == ["A"]
    assert MapConfig(worker=shout, cache=None).worker is shout

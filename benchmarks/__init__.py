"""polars_llm benchmarks: ``uv run python -m benchmarks`` (``--quick`` for a short run).

Each section measures ratios side by side in one run, against ``polars_llm.sim`` started in its own
process; results go to ``benchmarks/results/`` (JSON with machine info and library versions, plus a
Markdown table). See ``benchmarks/__main__.py`` for the options and each section's module for what it
measures and how.
"""

"""The DuckDB job store: jobs, files and locking, migrations, the batches table."""

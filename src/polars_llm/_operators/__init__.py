"""Row operators (``classify``, ``filter``, ``extract``), several rows per request (``pack``), and the set
operators built on them. Each module holds one noun; the public names are exported by ``polars_llm``."""

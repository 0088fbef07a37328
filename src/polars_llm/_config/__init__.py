"""Run settings: the option schema (:class:`MapConfig`) and its checks."""

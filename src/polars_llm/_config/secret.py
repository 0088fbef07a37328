"""The API key as a value that never shows itself.

:class:`~.options.MapConfig` keeps ``api_key`` as a :class:`Secret`, so no repr, log line, error message
or DuckDB row can carry it by accident.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Secret"]


class Secret:
    """A string that never shows itself in ``repr``/``str``.

    >>> s = Secret("sk-or-123")
    >>> s, str(s), s.get()
    (Secret('********'), '********', 'sk-or-123')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("Secret values are not picklable")

    # Immutable, so copies may share it: copy.deepcopy(cfg) and dataclasses.asdict(cfg) work, still hidden.
    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

"""aiohttp's transport failures as :class:`~polars_llm.APIError` subclasses, for every aiohttp caller.

The online transport and the batch client both send over aiohttp; :func:`aiohttp_failures` maps what it
raises the same way for both: no response in time, no connection (``refused``), a body cut short, any
other client or socket error.

>>> import aiohttp
>>> try:
...     with aiohttp_failures(aiohttp, base_url="http://127.0.0.1:9", timeout=5.0):
...         raise TimeoutError
... except Exception as e:
...     print(type(e).__name__, e)
APITimeoutError no complete response within 5 s
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

from .. import exceptions as exc

__all__ = ["aiohttp_failures"]


@contextlib.contextmanager
def aiohttp_failures(aiohttp: ModuleType, *, base_url: str, timeout: float, what: str = "") -> Iterator[None]:
    """Raise aiohttp's failures in the block as ``APIError`` subclasses; ``what`` (e.g. ``"GET <url>: "``)
    starts their messages."""
    try:
        yield
    except TimeoutError:
        raise exc.APITimeoutError(f"{what}no complete response within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as e:
        raise exc.APIConnectionError(f"cannot connect to {base_url}: {e.os_error}", refused=True) from None
    except aiohttp.ClientPayloadError as e:
        raise exc.MalformedResponseError(f"{what}truncated response body: {e}") from None
    except (aiohttp.ClientError, OSError, ValueError) as e:
        raise exc.APIConnectionError(f"{what}connection error: {type(e).__name__}: {e}") from None

"""What is sent: the request spec, inputs, keys, structured output, templates."""

from __future__ import annotations

from .inputs import prepare_struct
from .keys import KeyMaker, request_fingerprint
from .spec import request_spec
from .template import template

__all__ = ["KeyMaker", "prepare_struct", "request_fingerprint", "request_spec", "template"]

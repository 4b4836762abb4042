"""Request ids: the client's ``x-request-id`` when it is sane, else one of ours."""

from __future__ import annotations

import itertools
import os
import re

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")

# Unique without a system call per request: a random per-process prefix and a counter.
_ID_PREFIX = "req_" + os.urandom(6).hex()
_id_counter = itertools.count(1)


def new_request_id(client_supplied: str | None = None) -> str:
    """Keep a client's ``x-request-id`` when it is sane, else make ``req_<hex>``."""
    if client_supplied and _SANE_REQUEST_ID.match(client_supplied):
        return client_supplied
    return f"{_ID_PREFIX}{next(_id_counter):012x}"

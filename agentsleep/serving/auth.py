"""Bearer-token checks for the HTTP endpoints (`serve`, `serve-homes`)."""
from __future__ import annotations

import hmac
from typing import Iterable

from .backend import Unauthorized


def require_bearer(authorization: str, keys: Iterable[str], hint: str = "serve.api_key") -> None:
    """Raise Unauthorized unless `authorization` (the header's value) is ``Bearer <one of keys>``.
    No keys: anyone may. Compared in constant time; `hint` says which key to send."""
    keys = [k for k in keys if k]
    if not keys:
        return
    scheme, _, token = authorization.partition(" ")
    got = token.strip().encode()
    ok = [hmac.compare_digest(got, k.encode()) for k in keys]  # every key compared: no early exit
    if scheme.lower() != "bearer" or not any(ok):
        raise Unauthorized(f"missing or wrong API key: send 'Authorization: Bearer <{hint}>'", code="invalid_api_key")

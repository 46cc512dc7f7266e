"""etcd request timing: wraps one Store instance's request methods with ETCD_REQUEST_SECONDS.

Owns only the wrapping.  The Store adapter (controller/store) stays free of metrics; this module wraps
the methods of one *instance* (never the class), so stores made elsewhere (tests, meshctl) are
untouched, and what a method returns or raises passes through unchanged.  ``create`` is not wrapped: it
is one ``txn`` and is counted as that.  Watches are streams, not requests, and are not timed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshsec.controller.observability import metrics as m

# Store methods that are one etcd round trip each.
TIMED_OPERATIONS = (
    "get",
    "get_prefix",
    "revision",
    "put",
    "delete",
    "txn",
    "grant",
    "revoke",
    "keepalive_once",
)
_ATTR = "_meshsec_metrics_instrumented"


def _error_label(exc: BaseException) -> str:
    from meshsec.controller.store import Compacted, StoreUnavailable

    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    if isinstance(exc, Compacted):
        return "compacted"
    return "other"


def _timed(operation: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    histogram = m.ETCD_REQUEST_SECONDS.labels(operation)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            m.ETCD_ERRORS_TOTAL.labels(operation, _error_label(exc)).inc()
            raise
        finally:
            histogram.observe(time.perf_counter() - start)

    return wrapper


def instrument_store(store: Any) -> Any:
    """Time every request `store` makes from now on; idempotent; returns `store`."""
    if getattr(store, _ATTR, False):
        return store
    for name in TIMED_OPERATIONS:
        fn = getattr(store, name, None)
        if fn is not None:
            setattr(store, name, _timed(name, fn))
    setattr(store, _ATTR, True)
    return store

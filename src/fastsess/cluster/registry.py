"""Process-wide bookkeeping of the coordinators: the fork hook and unclosed stores.

Every live coordinator is registered here (weakly).  In a child made by ``os.fork()``
each is told to start over (``after_fork_in_child``): new identity, empty cache, its
own listener.  A store that is garbage-collected without ``close()`` is released by
``release_unclosed``.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
import weakref
from typing import Any, Protocol

from .redis_adapter import aclose_quietly, is_asyncio_client

log = logging.getLogger("fastsess.cluster")


class _Registered(Protocol):
    def after_fork_in_child(self) -> None: ...

    def request_stop(self) -> threading.Thread | None: ...


# Every live coordinator of this process, for the fork hook below.
_live: weakref.WeakSet[Any] = weakref.WeakSet()
_closing: set[Any] = set()  # aclose() tasks of unclosed asyncio stores' clients, until done


def register(coordinator: _Registered) -> None:
    """Have ``coordinator`` reset in every child this process forks from now on."""
    _live.add(coordinator)


def _after_fork_in_child() -> None:
    for coordinator in list(_live):
        try:
            coordinator.after_fork_in_child()
        except Exception:  # noqa: BLE001 - a failed reset must not break the child
            log.exception("resetting a coordinator after fork() failed")


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def release_unclosed(kind: str, coordinator: _Registered | None, client: Any) -> None:
    """The finalizer of a clustered store that was never closed: warn like an unclosed
    file (``ResourceWarning``), stop its listener and close the client it owns (an
    asyncio client: by a task on the event loop running here, if any; else its
    connections close when it is collected).  Never raises."""
    warnings.warn(f"unclosed {kind}: call close() (or use it as a context manager)", ResourceWarning, stacklevel=2)
    try:
        if coordinator is not None:
            thread = coordinator.request_stop()
            if thread is not None and thread is not threading.current_thread():
                thread.join(1.0)
        if client is None:
            return
        if not is_asyncio_client(client):
            client.close()
            return
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(aclose_quietly(client))
        _closing.add(task)
        task.add_done_callback(_closing.discard)
    except Exception:  # noqa: BLE001 - a finalizer must not raise
        log.debug("releasing an unclosed store failed", exc_info=True)

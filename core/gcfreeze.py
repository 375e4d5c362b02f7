"""Keep the cyclic garbage collector off a worker's long-lived objects.

CPython's collector walks every tracked object of the generation it
collects. A worker's oldest generation holds what it inherited from the
supervisor (modules, options, the app's code) and what it built while
booting (TLS contexts, config, tables): about 48,000 objects in a ztunnel
worker, all living as long as the worker. Under connection churn each new
tunnel makes Python objects, and a full collection then came every few
seconds and paused the worker for over 10 ms (docs/bench/ztunnel.md), which
every request in flight on that worker waited through. Walking them also
writes to each one's GC header, so a worker copies pages it could share with
the supervisor and its siblings.

`gc.freeze` moves every tracked object to a permanent generation that the
collector skips; reference counting still frees them. As the gc module
advises forking servers:
- the supervisor freezes right before a fork and unfreezes right after, so
  the child never walks the parent's objects and the supervisor's own
  collector keeps working;
- a worker, once booted, collects what booting left behind and freezes the
  rest, so the collections it runs under load walk only what it made since.

A frozen object that later ends up in an unreachable cycle is never freed.
That can only happen to what existed at boot, so the cost is bounded and
paid once.
"""

from __future__ import annotations

import gc
import os


def fork() -> int:
    """`os.fork()`, the caller's objects frozen in the child only."""
    gc.freeze()
    try:
        pid = os.fork()
    except BaseException:
        gc.unfreeze()
        raise
    if pid != 0:
        gc.unfreeze()
    return pid


def freeze_booted() -> int:
    """Collect boot's garbage, freeze what is left; returns the number frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

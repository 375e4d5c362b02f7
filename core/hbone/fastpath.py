"""Which HBONE data path runs: the C one (core/hbone/native/_native.c) or
the pure-Python one, chosen once per process.

The C module does TLS record calls on the SSL* behind Python's SSLObject
(see its header); tlsio.py asks it per connection (`attach`) and keeps the
Python path for any connection it refuses. `SHOAL_NATIVE=0` selects the
Python path everywhere (the fallback's own test runs use it); a missing or
unloadable module does the same, with one warning in the log.
"""

from __future__ import annotations

import os
from types import ModuleType

from shoal.core import log as shoal_log

# The environment switch; anything but "0" means "use the C path if it loads".
ENV = "SHOAL_NATIVE"


def _load() -> ModuleType | None:
    if os.environ.get(ENV, "1") == "0":
        return None
    try:
        import shoal.core.hbone.native._native as _native
    except ImportError as e:
        shoal_log.get("hbone").warning("HBONE native data path unavailable (%s); "
                                       "using the pure-Python one", e)
        return None
    return _native


native: ModuleType | None = _load()


class PythonFields:
    """The pure-Python path's stand-in for a C fields base (native/flow.c):
    it adds nothing, so the subclass's attributes stay in its instance dict."""

    __slots__ = ()


def fields_base(name: str, stand_in: type = PythonFields) -> type:
    """The C module's fields base `name` (a struct read by pointer from C and
    through member descriptors from Python), or `stand_in` without it."""
    return getattr(native, name) if native is not None else stand_in

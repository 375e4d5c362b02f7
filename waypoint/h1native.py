"""Whether the HTTP/1.1 fast path parses and frames heads in C, chosen once
per process.

waypoint/native/_h1.c calls the llhttp that httptools' extension carries
(no second copy, no hand-written parser): it is opened by path after
`httptools.parser.parser` is imported, and `_h1.init` proves llhttp 9's
ABI on known input before anything trusts it. The httptools releases it
was checked against are pinned in pyproject.toml and checked here again,
since a venv can hold anything. `SHOAL_NATIVE=0` (the switch the HBONE
data path uses too) selects the Python parsers; so does any failure to
load, with one warning in the log.
"""

from __future__ import annotations

import os
from types import ModuleType

from shoal.core import log as shoal_log
from shoal.waypoint.http1 import MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_REQUEST_LINE

# The environment switch; anything but "0" means "use the C path if it loads".
ENV = "SHOAL_NATIVE"
# httptools releases whose bundled llhttp (9.x) _h1.c was verified with;
# keep in step with pyproject.toml's pin.
HTTPTOOLS_SERIES = ("0.9.",)


def _load() -> ModuleType | None:
    if os.environ.get(ENV, "1") == "0":
        return None
    try:
        import httptools
        import httptools.parser.parser as llhttp_module
        if not httptools.__version__.startswith(HTTPTOOLS_SERIES):
            raise ImportError(f"httptools {httptools.__version__} is not a verified release")
        from shoal.waypoint.native import _h1
        _h1.init(llhttp_module.__file__)
        _h1.configure(MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_REQUEST_LINE)
    except (ImportError, ValueError, RuntimeError) as e:
        shoal_log.get("waypoint").warning("waypoint native HTTP/1.1 path unavailable (%s); "
                                          "using the pure-Python one", e)
        return None
    return _h1


native: ModuleType | None = _load()

"""HBONE: Istio's HTTP/2 CONNECT tunnel over mutual TLS 1.3 (docs/hbone.md).

    from shoal.core.hbone import HbonePool, HboneServer, ConnectRequest, Accept, Reject, HboneError

The sans-IO core is `core.hbone.protocol`; the asyncio adapters are loaded
lazily so that pure users (unit tests, tools) do not pull in asyncio/ssl.
"""

from shoal.core.hbone.errors import (HboneError, LocalProtocolError, PeerIdentityError,
                               RemoteProtocolError, StreamResetError)
from shoal.core.hbone.settings import DEFAULT_SETTINGS, HboneSettings

_LAZY = {
    "HboneStream": "shoal.core.hbone.stream", "HboneConnection": "shoal.core.hbone.connection",
    "HboneServer": "shoal.core.hbone.server", "ConnectRequest": "shoal.core.hbone.server",
    "Accept": "shoal.core.hbone.server", "Reject": "shoal.core.hbone.server",
    "HbonePool": "shoal.core.hbone.pool",
}

__all__ = ["DEFAULT_SETTINGS", "HboneError", "HboneSettings", "LocalProtocolError",
           "PeerIdentityError", "RemoteProtocolError", "StreamResetError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)

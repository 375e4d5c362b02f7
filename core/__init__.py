"""shoal core: building blocks shared by every shoal process.

Resource model, identity/CA/TLS, HBONE, metrics, logging, admin server, CLI.
"""

from shoal import __version__  # noqa: F401  (one version, kept in shoal/__init__.py)

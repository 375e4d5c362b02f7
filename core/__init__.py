"""shoal core: building blocks shared by every shoal process.

Resource model, identity/CA/TLS, HBONE, metrics, logging, admin server, CLI.
"""

__version__ = "0.1.0"

# Types of the C module shoal.waypoint.native._h1 (_h1.c), from its method
# table and docstrings.
from typing_extensions import Buffer

# Response.feed codes (bits).
FALLBACK: int
HEAD: int
DONE: int
CUT: int

# init(path of httptools' parser .so): bind llhttp, prove the ABI (ImportError if not)
def init(path: str, /) -> None: ...
# configure(max_header_bytes, max_header_count, max_request_line): http1.py's limits
def configure(max_header_bytes: int, max_header_count: int, max_request_line: int, /) -> None: ...
# one whole body-less request head -> (method, target, headers, host, version,
# keep_alive, content_length); None: give the bytes to the Python parser
def parse_request(data: Buffer, /) -> tuple[str, str, list[tuple[str, str]], str, str, bool,
                                             int | None] | None: ...

class Response:
    """One upstream response parsed and framed for an HTTP/1.x client."""
    def __init__(self, client_http11: bool, client_keep_alive: bool) -> None: ...
    # feed(data, draining) -> (client_bytes, code): b"" is EOF
    def feed(self, data: Buffer, draining: bool, /) -> tuple[bytes, int]: ...
    @property
    def raw(self) -> bytes: ...
    @property
    def status(self) -> int: ...
    @property
    def body_bytes(self) -> int: ...
    @property
    def close_after(self) -> bool: ...
    @property
    def reusable(self) -> bool: ...

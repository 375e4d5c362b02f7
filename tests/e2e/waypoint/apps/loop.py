"""A client loop for the waypoint scaling test (standard library only).

Sends GET requests to URL back to back, a new connection each (so the
ztunnel picks a waypoint replica per request) or, with --keepalive, on one
connection for as long as the server keeps it open, until the file STOP
exists (STOP.started appears after the first answer); then prints one JSON
line: the count per status code (or error text), connections opened and
requests re-sent because a reused idle connection had been closed.
"""

import http.client
import json
import os
import sys
import time
from urllib.parse import urlsplit

REQUEST_TIMEOUT_S = 5.0   # far above a mesh round trip; a stuck request counts as failed


def main() -> None:
    url, stop = sys.argv[1], sys.argv[2]
    keepalive = "--keepalive" in sys.argv[3:]
    u = urlsplit(url)
    codes: dict[str, int] = {}
    conns = stale = 0
    fresh = True

    def reused(e: Exception) -> bool:
        return not fresh and isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError,
                                            ConnectionResetError))
    started = time.monotonic()
    c = None
    while not os.path.exists(stop):
        if sum(codes.values()) == 1:
            open(stop + ".started", "w").close()      # the test waits for this
        try:
            fresh = c is None
            if fresh:
                c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=REQUEST_TIMEOUT_S)
                conns += 1
            c.request("GET", u.path or "/")
            r = c.getresponse()
            r.read()
            key = str(r.status)
            # A draining waypoint says `connection: close` on its last answer.
            if not keepalive or r.will_close:
                c.close()
                c = None
        except (ConnectionError, http.client.RemoteDisconnected) as e:
            c = None
            if reused(e):
                # Closed while idle (a draining server may): the request never
                # reached it, so send it again on a new connection, as HTTP
                # clients do (RFC 9112 9.3.1, idempotent requests).
                stale += 1
                continue
            key = f"error: {type(e).__name__}: {e}"
            print(f"{time.time():.3f} {key}", file=sys.stderr, flush=True)
        except (OSError, http.client.HTTPException) as e:
            key = f"error: {type(e).__name__}: {e}"
            print(f"{time.time():.3f} {key}", file=sys.stderr, flush=True)
            c = None
        codes[key] = codes.get(key, 0) + 1
    print(json.dumps({"codes": codes, "connections": conns, "stale_retries": stale,
                      "seconds": round(time.monotonic() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()

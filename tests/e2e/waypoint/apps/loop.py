"""A client loop for the waypoint scaling test (standard library only).

Sends GET requests to URL back to back, a new connection each (so the
ztunnel picks a waypoint replica per request), until the file STOP exists (STOP.started appears after the first answer);
then prints one JSON line: the count per status code (or error text) and
the count per answering backend pod.
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
    u = urlsplit(url)
    codes: dict[str, int] = {}
    started = time.monotonic()
    while not os.path.exists(stop):
        if sum(codes.values()) == 1:
            open(stop + ".started", "w").close()      # the test waits for this
        try:
            c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=REQUEST_TIMEOUT_S)
            c.request("GET", u.path or "/")
            r = c.getresponse()
            r.read()
            key = str(r.status)
            c.close()
        except (OSError, http.client.HTTPException) as e:
            key = f"error: {type(e).__name__}: {e}"
        codes[key] = codes.get(key, 0) + 1
    print(json.dumps({"codes": codes, "seconds": round(time.monotonic() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()

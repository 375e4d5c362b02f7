"""HTTP message heads as the waypoint's pure code sees them.

One representation for HTTP/1.1 and HTTP/2 so routing, filters and policy do
not care which protocol the client spoke. Header names keep the case they
arrived with (HTTP/1.1 peers sometimes care); lookups are case-insensitive.
Values are `str` decoded as latin-1, which round-trips every byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, str]]


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str                     # origin-form: path plus "?query"
    headers: Headers = field(default_factory=list)
    scheme: str = "http"
    authority: str = ""             # Host / :authority

    @property
    def path(self) -> str:
        """The target without query or fragment (what routes match)."""
        cut = self.target.find("?")
        path = self.target if cut < 0 else self.target[:cut]
        frag = path.find("#")
        return path if frag < 0 else path[:frag]

    @property
    def query(self) -> str:
        cut = self.target.find("?")
        return "" if cut < 0 else self.target[cut + 1:]

    def copy(self) -> RequestHead:
        return RequestHead(method=self.method, target=self.target, headers=list(self.headers),
                           scheme=self.scheme, authority=self.authority)


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: Headers = field(default_factory=list)
    reason: str = ""


def get(headers: Headers, name: str) -> str | None:
    """The values of `name` joined by "," (RFC 9110 5.3), None if absent."""
    lname = name.lower()
    found = [v for k, v in headers if k.lower() == lname]
    if not found:
        return None
    return found[0] if len(found) == 1 else ",".join(found)


def get_all(headers: Headers, name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def remove(headers: Headers, name: str) -> Headers:
    lname = name.lower()
    return [(k, v) for k, v in headers if k.lower() != lname]


def set_(headers: Headers, name: str, value: str) -> Headers:
    """Replace every `name` with one value (appended at the end when new)."""
    lname = name.lower()
    out: Headers = []
    done = False
    for k, v in headers:
        if k.lower() == lname:
            if not done:
                out.append((name, value))
                done = True
            continue
        out.append((k, v))
    if not done:
        out.append((name, value))
    return out


def as_dict(headers: Headers) -> dict[str, str]:
    """Lower-case name -> joined value (for policy `request.headers[...]`)."""
    out: dict[str, str] = {}
    for k, v in headers:
        lk = k.lower()
        out[lk] = f"{out[lk]},{v}" if lk in out else v
    return out


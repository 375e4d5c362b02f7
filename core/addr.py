"""Addresses as text: `host:port`, CONNECT authorities, `forwarded: for=`.

Pure functions, written once for every proxy (the ztunnel, the waypoint and
the HBONE layer all print and parse the same shapes):

- `hostport(host, port)`: `10.0.0.1:80`, `[fd00::1]:80` (RFC 3986 brackets
  around an IPv6 literal);
- `parse_authority(a)`: a CONNECT `:authority` (`ip:port`, `[v6]:port` or
  `name:port`), strictly, raising ValueError with a sentence;
  `parse_ip_port(a)`: the same, but the host must be an IP literal (what
  HBONE's `:authority` carries);
- `split_host_port(a, default)`: a Host header, leniently (no port, or a
  bad one, gives `default`), for L7 routing;
- `forwarded(client, host)` / `forwarded_for(value)`: the `forwarded`
  header HBONE carries (RFC 7239; Istio sends `for="ip:port"` and, for a
  service target, `;host=`).
"""

from __future__ import annotations

import ipaddress
import re

# RFC 1123 host names, each label 1-63 characters, the whole at most 253.
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)"
                       r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$", re.I)
MAX_PORT = 65535


def bracket(host: str) -> str:
    """An IPv6 literal in brackets (as in a URL or authority); other hosts as they are."""
    return f"[{host}]" if ":" in host else host


def hostport(host: str, port: int) -> str:
    """`host:port`, with an IPv6 literal in brackets."""
    return f"{bracket(host)}:{port}"


def _split(authority: str) -> tuple[str, str]:
    """`[v6]:port` / `host:port` / `host` -> (host, port text or "")."""
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad IPv6 authority {authority!r}; expected [addr]:port")
        ipaddress.IPv6Address(host)
        return host, rest[1:]
    if authority.count(":") > 1:
        raise ValueError(f"IPv6 authority {authority!r} needs brackets: [addr]:port")
    host, _, port_s = authority.partition(":")
    return host, port_s


def _port(port_s: str) -> int:
    if not port_s.isdigit() or len(port_s) > 5 or not 0 < int(port_s) <= MAX_PORT:
        raise ValueError(f"authority port {port_s!r} is not 1..{MAX_PORT}")
    return int(port_s)


def parse_authority(authority: str) -> tuple[str, int]:
    """Split `ip:port`, `[v6]:port` or `name:port`.

    Raises:
        ValueError: with a sentence saying what is wrong.
    """
    if ":" not in authority:
        raise ValueError(f"authority {authority!r} is not host:port")
    host, port_s = _split(authority)
    if not host:
        raise ValueError(f"authority {authority!r} has no host")
    if not authority.startswith("["):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _DNS_NAME.match(host):
                raise ValueError(f"authority host {host!r} is neither an IP nor a DNS name") from None
    return host, _port(port_s)


def parse_ip_port(authority: str) -> tuple[str, int]:
    """`ip:port` or `[v6]:port`: what HBONE's CONNECT names.

    Raises:
        ValueError: not an IP literal and a port 1..65535.
    """
    host, port = parse_authority(authority)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"authority host {host!r} is not an IP address") from None
    return host, port


def split_host_port(authority: str, default_port: int = 0) -> tuple[str, int]:
    """A Host header -> (host, port); no port or a bad one -> `default_port`.

    Lenient on purpose: L7 routing matches the host name, and a client that
    sends `Host: name:junk` is routed by the name, as Envoy does.
    """
    try:
        host, port_s = _split(authority)
    except ValueError:
        return authority, default_port
    try:
        return host, _port(port_s)
    except ValueError:
        return host, default_port


def forwarded(client: tuple[str, int] | None, host: str | None = None) -> str | None:
    """`for="ip:port"` plus `;host=<service fqdn>` when a service was targeted."""
    if client is None:
        return None
    value = f'for="{hostport(client[0], client[1])}"'
    return f"{value};host={host}" if host else value


def parse_forwarded(value: str) -> dict[str, str]:
    """`for="1.2.3.4:5";host=x` -> {"for": "1.2.3.4:5", "host": "x"} (first element)."""
    out: dict[str, str] = {}
    for pair in value.split(",", 1)[0].split(";"):
        key, sep, val = pair.strip().partition("=")
        if sep:
            out[key.lower()] = val.strip().strip('"')
    return out


def forwarded_for(value: str) -> tuple[str, int] | None:
    """The original client (ip, port) of a `forwarded` header; port 0 if it
    names none. None when absent or not an IP (RFC 7239 allows obfuscated
    identifiers such as `for=_hidden`, which name no address)."""
    node = parse_forwarded(value).get("for")
    if not node:
        return None
    host, port_s = node, ""
    try:
        host, port_s = _split(node)
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port_s) if port_s.isdigit() and int(port_s) <= MAX_PORT else 0

"""Original destination of a REDIRECTed connection (SO_ORIGINAL_DST).

The pod's nat rules REDIRECT its outbound TCP to 15001 and inbound plaintext
to 15006; conntrack remembers where the connection was going, and the
`SO_ORIGINAL_DST` socket option (IPv4) / `IP6T_SO_ORIGINAL_DST` (IPv6)
returns it (ztunnel's `socket.rs::orig_dst_addr`).
"""

from __future__ import annotations

import socket
import struct

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80     # linux/netfilter_ipv6/ip6_tables.h
_SOCKADDR_IN_LEN = 16
_SOCKADDR_IN6_LEN = 28


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The (ip, port) the client originally connected to.

    Raises:
        OSError: the connection was not redirected (no conntrack entry).
    """
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_LEN)
        port = struct.unpack_from("!H", raw, 2)[0]
        ip = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        return ip, port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_LEN)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


def parse_sockaddr_in(raw: bytes) -> tuple[str, int]:
    """Decode a `struct sockaddr_in` (for tests and IPv4 callers)."""
    return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]

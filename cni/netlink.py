"""The three rtnetlink requests a pod's capture needs, encoded by hand.

`ip link set lo up`, `ip rule add fwmark M/MASK pref P lookup T` and `ip
route add local 0.0.0.0/0 dev lo table T` (and their deletes) are one small
message each. pyroute2 opens a full IPRoute (its own event loop, tens of ms
per pod on this machine class) for them; here each is a struct and two
syscalls, which is most of what keeps a pod's ADD near bridge + host-local.
Encoding is pure (rtnetlink(7), linux/fib_rules.h, linux/rtnetlink.h);
`request` is the only I/O. `cni.redirect.check` still reads with pyroute2.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
RTM_NEWLINK = 16
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWRULE, RTM_DELRULE = 32, 33
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFF_UP = 0x1
# The kernel gives every netns's loopback this index (LOOPBACK_IFINDEX).
LOOPBACK_IFINDEX = 1
FR_ACT_TO_TBL = 1
FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 6, 10, 15, 16
RTA_OIF, RTA_TABLE = 4, 15
RTN_LOCAL = 2
RT_SCOPE_HOST = 254
RTPROT_BOOT = 3
RT_TABLE_MAX_U8 = 255          # larger tables go only in the attribute
# An ACK is a header, an errno and the request's header; 4 KiB is plenty.
RECV_BYTES = 4096

_HDR = struct.Struct("=IHHII")         # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")     # ifinfomsg
_RTMSG = struct.Struct("=BBBBBBBBI")   # rtmsg and fib_rule_hdr share this layout


class NetlinkError(OSError):
    """The kernel refused a request (errno in `.errno`)."""


def _attr(kind: int, value: int) -> bytes:
    return struct.pack("=HHI", 8, kind, value)


def _msg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body


def link_up(seq: int, index: int = LOOPBACK_IFINDEX) -> bytes:
    return _msg(RTM_NEWLINK, 0, seq, _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP))


def fwmark_rule(seq: int, *, add: bool, mark: int, mask: int, priority: int, table: int) -> bytes:
    hdr = _RTMSG.pack(socket.AF_INET, 0, 0, 0, table if table <= RT_TABLE_MAX_U8 else 0,
                      0, 0, FR_ACT_TO_TBL, 0)
    attrs = (_attr(FRA_PRIORITY, priority) + _attr(FRA_FWMARK, mark) + _attr(FRA_FWMASK, mask)
             + _attr(FRA_TABLE, table))
    return _msg(RTM_NEWRULE if add else RTM_DELRULE, NLM_F_CREATE | NLM_F_EXCL if add else 0, seq,
                hdr + attrs)


def local_default_route(seq: int, *, add: bool, table: int, oif: int = LOOPBACK_IFINDEX) -> bytes:
    hdr = _RTMSG.pack(socket.AF_INET, 0, 0, 0, table if table <= RT_TABLE_MAX_U8 else 0,
                      RTPROT_BOOT, RT_SCOPE_HOST, RTN_LOCAL, 0)
    return _msg(RTM_NEWROUTE if add else RTM_DELROUTE, NLM_F_CREATE | NLM_F_EXCL if add else 0, seq,
                hdr + _attr(RTA_OIF, oif) + _attr(RTA_TABLE, table))


def parse_ack(data: bytes, seq: int) -> int:
    """The errno of the ACK for `seq` (0 = success). Raises ValueError on garbage."""
    while len(data) >= _HDR.size:
        length, kind, _flags, got_seq, _pid = _HDR.unpack_from(data)
        if length < _HDR.size or length > len(data):
            raise ValueError("truncated netlink message")
        if kind == NLMSG_ERROR and got_seq == seq:
            if length < _HDR.size + 4:
                raise ValueError("short NLMSG_ERROR")
            return -struct.unpack_from("=i", data, _HDR.size)[0]
        data = data[(length + 3) & ~3:]
    raise ValueError(f"no ACK for sequence {seq}")


def open_route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's current netns."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    s.bind((0, 0))
    return s


def request(sock: socket.socket, msg: bytes, ok: frozenset[int] = frozenset()) -> None:
    """Send one request and wait for its ACK; errnos in `ok` count as success."""
    seq = _HDR.unpack_from(msg)[3]
    sock.send(msg)
    err = parse_ack(sock.recv(RECV_BYTES), seq)
    if err and err not in ok:
        raise NetlinkError(err, f"{os.strerror(err)} ({errno.errorcode.get(err, err)})")

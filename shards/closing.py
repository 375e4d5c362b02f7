"""Closing a listener for good without resetting a connection queued on it.

Why this exists: closing a listening socket resets every connection the
kernel has completed for it but nobody accepted yet. `tcp_migrate_req`
(core.sockets.enable_listener_migration) moves that queue to another
SO_REUSEPORT listener of the group, and the worker accepts what is queued
before it closes (shards/listener.py), but neither closes the window:
Linux checks that the listener is still listening when a handshake's last
ACK arrives, builds the child socket, and only then queues it; if the
listener closed in between, `inet_csk_reqsk_queue_add` finds it closed and
resets the child (about 1 in 800 connections in a SIGTTOU under load). At a
full stop there is no other listener to migrate to at all.

The fix is to let no handshake start on a listener once it is to close:
1. `refuse_new_handshakes(sock)` attaches a classic BPF socket filter that
   drops a TCP segment whose flags are SYN without ACK. The kernel runs a
   listener's filter on each SYN after SO_REUSEPORT chose the listener, so a
   dropped SYN is retransmitted by the client (after its 1 s initial RTO),
   by which time this listener is gone: the retry lands on a live listener
   of the group (SIGTTOU) or is refused (a full stop), never reset.
   Every other segment passes, so handshakes already under way complete.
2. The caller waits HANDSHAKE_SETTLE for those to complete into the accept
   queue while the worker still accepts.
3. The worker then accepts what is queued and closes; nothing can arrive
   between its last accept and its close.

A socket filter belongs to the socket, not to the fd: only the process
closing a socket's last reference may quiesce it (never a socket another
worker or a new supervisor keeps serving). Unprivileged, Linux >= 2.2.
Steering with a SO_REUSEPORT eBPF program (sockarray) would spare the 1 s
retry but needs CAP_BPF; this costs one RTO to the few clients whose SYN
lands in the window.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)

# Time for handshakes whose SYN-ACK left before the filter to complete: one
# round trip (microseconds on loopback and a node's veths, well under this
# across a data-centre network). One still in flight after it is migrated
# by tcp_migrate_req when another listener lives.
HANDSHAKE_SETTLE = 0.1

# Classic BPF opcodes (linux/filter.h).
_LD_B_ABS = 0x30        # A = byte at packet offset k (the TCP header here)
_ALU_AND_K = 0x54       # A &= k
_JMP_JEQ_K = 0x15       # if A == k goto +jt else goto +jf
_RET_K = 0x06           # accept k bytes (0: drop)
_TCP_FLAGS_OFFSET = 13  # RFC 9293 §3.1: the byte holding CWR..FIN
_SYN, _ACK = 0x02, 0x10
_KEEP_ALL = 0xFFFFFFFF

# For a TCP socket the kernel runs the filter with the packet starting at the
# TCP header (tcp_filter()), for IPv4 and IPv6 alike.
DROP_BARE_SYN = (
    (_LD_B_ABS, 0, 0, _TCP_FLAGS_OFFSET),
    (_ALU_AND_K, 0, 0, _SYN | _ACK),
    (_JMP_JEQ_K, 0, 1, _SYN),
    (_RET_K, 0, 0, 0),
    (_RET_K, 0, 0, _KEEP_ALL),
)


def _fprog(program) -> tuple[bytes, ctypes.Array]:
    """struct sock_fprog for `program`; keep the buffer alive across the call."""
    insns = b"".join(struct.pack("HBBI", *i) for i in program)
    buf = ctypes.create_string_buffer(insns, len(insns))
    return struct.pack("HL", len(program), ctypes.addressof(buf)), buf


def refuse_new_handshakes(sock: socket.socket) -> bool:
    """Drop SYNs to this listener from now on (see above). False if it is
    no TCP socket (the program reads TCP flags), is already closed, or the
    kernel refused the filter."""
    try:
        if (sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.type != socket.SOCK_STREAM):
            return False
    except OSError:
        return False
    prog, _buf = _fprog(DROP_BARE_SYN)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
    except OSError:
        return False
    return True


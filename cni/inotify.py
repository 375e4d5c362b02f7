"""inotify(7) through ctypes: tell when anything changes in a few directories.

The installer only needs "something changed here, look again" (it re-reads
the directory itself), so events are drained, not decoded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# Everything that can change what a directory holds or a file says.
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
              | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
# One read takes many events (each is 16 bytes + name, names <= 255).
READ_BYTES = 64 * 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Watch:
    """Non-blocking inotify fd watching directories; `fileno()` for select."""

    def __init__(self, paths: list[str]) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        try:
            for p in paths:
                if _libc.inotify_add_watch(self.fd, os.fsencode(p), WATCH_MASK) < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"inotify_add_watch({p}): {os.strerror(err)}")
        except BaseException:
            os.close(self.fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> bool:
        """Consume pending events; True if there were any."""
        seen = False
        while True:
            try:
                if not os.read(self.fd, READ_BYTES):
                    return seen
                seen = True
            except BlockingIOError:
                return seen
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise

    def close(self) -> None:
        os.close(self.fd)

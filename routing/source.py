"""Config sources for the watcher: a directory of YAML, watched with inotify.

`DirectorySource(path, overlay=None)`:
- `wait(timeout, wake=None)` blocks until something under the directory may
  have changed (inotify through ctypes; mtime polling every POLL_INTERVAL when
  inotify is unavailable) and returns True, or False on timeout (None: no
  timeout) or as soon as the `wake` fd is readable (the watcher's signals).
  A watch dies with its directory (IN_IGNORED), so a directory that is
  deleted and created again is watched again, and a root that does not exist
  yet (an overlay the mesh builder creates later) is polled until it appears:
  otherwise its changes would never reach the table.
- `load()` returns a validated `ConfigSet` plus overlay pods, re-parsing only
  files whose (mtime, size, inode) changed, so unchanged resources keep their
  identity and the incremental compiler skips them. Raises ConfigError.
  That fingerprint can miss a rewrite: an atomic replace often gets the
  freed inode back, and on coarse-clock kernels two writes within one tick
  share an mtime. So, as git does for "racily clean" files, a file whose
  mtime is not clearly older than our last read of it is read again and
  compared by digest.
- `overlay`: a second directory whose Pods (with `status.podIP`) replace the
  same-named Deployment replicas: how a mesh builder hands out pod IPs.

A resource's creation index (Gateway API's "oldest first" tie-break) is the
order in which this source first saw it, like a creationTimestamp.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import hashlib
import math
import os
import select
import struct
import time
from pathlib import Path

from shoal.core.model import ConfigError, ConfigSet, FieldError, Pod
from shoal.core.model.loader import MAX_FILE_BYTES, finish, parse_text, yaml_files
from shoal.core.model.resources import Note

POLL_INTERVAL = 0.02        # fallback only: bounds change latency at 20 ms
# A file modified less than this before we read it may change again with the
# same (mtime, size, inode): kernel file clocks tick every 1-10 ms (jiffies).
RACY_NS = 50_000_000
DEBOUNCE = 0.005            # coalesce an editor's write+rename burst into one reload
# inotify(7) masks
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_ONLYDIR, IN_NONBLOCK, IN_CLOEXEC = 0x400, 0x800, 0x01000000, 0x800, 0x80000
IN_IGNORED = 0x8000         # the kernel removed a watch (its directory is gone)
WATCH_MASK = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE |
              IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")


class Inotify:
    """Minimal inotify over ctypes: watch directories, wait for any event."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        self._watched: dict[str, int] = {}      # directory -> watch descriptor
        self._paths: dict[int, str] = {}        # watch descriptor -> directory

    def watching(self, path: Path) -> bool:
        return str(path) in self._watched

    def watch_tree(self, root: Path) -> int:
        """Watch `root` and its subdirectories; returns how many watches are new."""
        added = 0
        if not root.is_dir():
            return added
        for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            key = str(d)
            if key in self._watched:
                continue
            wd = self._add(self.fd, key.encode(), WATCH_MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOENT, errno.ENOTDIR):
                    raise OSError(err, f"inotify_add_watch({key}) failed")
                continue
            self._watched[key] = wd
            self._paths[wd] = key
            added += 1
        return added

    def wait(self, timeout: float | None, wake: int | None = None) -> list[int]:
        """The readable ones of this fd and `wake` ([] on timeout), so the
        caller tells an event from a wakeup with no second select; an event
        is debounced and drained before returning."""
        ready = _ready([self.fd], timeout, wake)
        if self.fd in ready:
            time.sleep(DEBOUNCE)
            self.drain()
        return ready

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self._forget_removed(data)

    def _forget_removed(self, data: bytes) -> None:
        """Drop watches the kernel removed, so `watch_tree` adds the directory's
        successor (same path, new inode) instead of skipping it forever."""
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
            pos += _EVENT.size + length
            if mask & IN_IGNORED:
                path = self._paths.pop(wd, None)
                if path is not None and self._watched.get(path) == wd:
                    del self._watched[path]

    def reset(self) -> None:
        self._watched.clear()   # re-add every watch on the next watch_tree
        self._paths.clear()

    def close(self) -> None:
        os.close(self.fd)


def _ready(fds: list[int], timeout: float | None, wake: int | None = None) -> list[int]:
    """Wait until one of `fds` or `wake` is readable (None: no timeout); the
    readable ones, so a caller tells its own event from a wakeup."""
    ready, _, _ = select.select(fds if wake is None else [*fds, wake], [], [],
                                None if timeout is None else max(timeout, 0))
    return ready


def _left(deadline: float) -> float | None:
    return None if deadline == math.inf else deadline - time.monotonic()


@dataclasses.dataclass(slots=True, kw_only=True)
class _Parsed:
    """One file's parse, reused while its fingerprint and content stay the same."""
    fp: tuple[int, int, int]
    read_at_ns: int                 # wall clock just before the read
    digest: bytes
    resources: list
    notes: list
    errors: list

    def racy(self) -> bool:
        return self.fp[0] >= self.read_at_ns - RACY_NS


class DirectorySource:
    """A directory of Kubernetes YAML (see module docstring)."""

    def __init__(self, path: str | os.PathLike, *, overlay: str | os.PathLike | None = None,
                 use_inotify: bool = True) -> None:
        self.path = Path(path)
        self.overlay = Path(overlay) if overlay else None
        self._cache: dict[Path, _Parsed] = {}
        self._first_seen: dict[tuple[str, str, str], int] = {}
        self._inotify: Inotify | None = None
        if use_inotify:
            try:
                self._inotify = Inotify()
            except OSError:
                self._inotify = None
        self._fingerprint = self._stat_all()
        self._watch()
        self._rewatch = False       # set after events: walk the trees for new directories

    def describe(self) -> str:
        return f"dir:{self.path}" + (f" overlay:{self.overlay}" if self.overlay else "")

    def _roots(self) -> list[Path]:
        return [self.path] + ([self.overlay] if self.overlay else [])

    def _watch(self, full: bool = True) -> int:
        """(Re)add inotify watches; returns how many directories were not watched.
        `full=False` only looks at roots not watched yet (cheap: no tree walk)."""
        if self._inotify is None:
            return 0
        return sum(self._inotify.watch_tree(root) for root in self._roots()
                   if full or not self._inotify.watching(root))

    def _stat_all(self) -> dict[Path, tuple[int, int, int]]:
        out = {}
        for root in self._roots():
            out.update(self._stat_root(root))
        return out

    def _stat_root(self, root: Path) -> dict[Path, tuple[int, int, int]]:
        try:
            files = yaml_files(root)
        except FileNotFoundError:
            return {}
        out = {}
        for f in files:
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            out[f] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return out

    def _unwatched_changed(self, roots: list[Path]) -> bool:
        """Roots inotify cannot watch (missing, or a single file), checked by stat."""
        for root in roots:
            before = {f: fp for f, fp in self._fingerprint.items()
                      if f == root or f.is_relative_to(root)}
            if self._stat_root(root) != before:
                return True
        return False

    def wait(self, timeout: float | None, wake: int | None = None) -> bool:
        """True when the directory may have changed (the caller then `load`s);
        False on timeout or once `wake` is readable (see module docstring)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        if self._inotify is None:
            return self._poll(deadline, wake)
        while True:
            # Directories watched only now (new subdirectories after an event, a
            # re-created directory, a late root): what was written in them
            # before their watch existed raised no event.
            added = self._watch(full=self._rewatch)
            self._rewatch = False
            if added and self._stat_all() != self._fingerprint:
                return True
            # A missing root cannot be watched (its parent is not ours): poll it.
            unwatched = [r for r in self._roots() if not self._inotify.watching(r)]
            if unwatched and self._unwatched_changed(unwatched):
                return True
            left = _left(deadline)
            if unwatched:
                left = POLL_INTERVAL if left is None else min(left, POLL_INTERVAL)
            ready = self._inotify.wait(left, wake)
            if self._inotify.fd in ready:
                self._rewatch = True
                return True
            if ready or time.monotonic() >= deadline:
                return False        # woken, or the deadline passed

    def _poll(self, deadline: float, wake: int | None) -> bool:
        while True:
            if self._stat_all() != self._fingerprint:
                return True
            left = _left(deadline)
            if left is not None and left <= 0:
                return False
            if _ready([], POLL_INTERVAL if left is None else min(POLL_INTERVAL, left), wake):
                return False        # woken

    def stale(self) -> bool:
        """Whether `load()` could now return something else: a file's (mtime,
        size, inode) is not what the last load saw, or a file was read too soon
        after its last write for them to be trusted (see `_Parsed.racy`)."""
        return (self._stat_all() != self._fingerprint
                or any(p.racy() for p in self._cache.values()))

    def invalidate(self) -> None:
        """Forget parsed files (SIGHUP: re-read everything)."""
        self._cache.clear()

    def load(self) -> tuple[ConfigSet, list[Pod]]:
        """The validated config and the overlay pods. Raises ConfigError."""
        self._fingerprint = self._stat_all()
        errors: list[FieldError] = []
        notes: list[Note] = []
        main: list = []
        extra: list[Pod] = []
        if not self.path.is_dir() and not self.path.is_file():
            raise ConfigError([FieldError(file=str(self.path), kind="", namespace="", name="",
                                          field="", message="config directory does not exist")])
        for f, fp in sorted(self._fingerprint.items()):
            res, n, errs = self._parse(f, fp)
            errors += errs
            notes += n
            if self.overlay is not None and f.is_relative_to(self.overlay):
                extra += [r for r in res if isinstance(r, Pod)]
            else:
                main += res
        for f in set(self._cache) - set(self._fingerprint):
            del self._cache[f]
        return finish(main, notes, errors), extra

    def _parse(self, f: Path, fp: tuple[int, int, int]) -> tuple[list, list, list]:
        cached = self._cache.get(f)
        if cached is not None and cached.fp == fp and not cached.racy():
            return cached.resources, cached.notes, cached.errors
        errors: list[FieldError] = []
        notes: list[Note] = []
        read_at = time.time_ns()
        try:
            if fp[1] > MAX_FILE_BYTES:
                raise OSError(f"file is larger than {MAX_FILE_BYTES} bytes")
            data = f.read_bytes()
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if cached is not None and cached.fp == fp and cached.digest == digest:
                cached.read_at_ns = read_at         # unchanged: keep the same objects
                return cached.resources, cached.notes, cached.errors
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(FieldError(file=str(f), kind="", namespace="", name="", field="",
                                     message=f"cannot read: {exc}"))
            return [], notes, errors
        res = [self._stamp(r) for r in parse_text(text, file=str(f), errors=errors, notes=notes)]
        self._cache[f] = _Parsed(fp=fp, read_at_ns=read_at, digest=digest, resources=res,
                                 notes=notes, errors=errors)
        return res, notes, errors

    def _stamp(self, r):
        index = self._first_seen.setdefault(r.meta.key, len(self._first_seen))
        return dataclasses.replace(r, meta=dataclasses.replace(r.meta, index=index))

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

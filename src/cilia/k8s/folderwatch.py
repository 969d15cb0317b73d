"""Watching manifest folders: Linux inotify read on the event loop itself, so nothing runs (no thread,
no timer) while nothing changes, and a change is seen as it happens. Where inotify is not to be had
(another kernel, or the per-user watch limit reached), a stat poll every `POLL_INTERVAL_S` instead.

What comes out is a batch of changed paths, or a request to rescan everything: after a queue overflow,
a new or moved folder (it may hold files already), or a poll."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("cilia.source.file")

# A batch ends as soon as every path in it has settled (its last event a close after writing, a rename, a
# delete): no delay of our own on top of the server's debounce. A file still being written (created or
# modified, not closed) waits until no event came for QUIET_S, so its writer's several writes are read
# once, not half-written; but never longer than MAX_BATCH_S, so a file kept open and written is still read.
QUIET_S = 0.05
MAX_BATCH_S = 1.0
POLL_INTERVAL_S = 1.0  # the fallback's stat poll
MAX_WATCHED_FOLDERS = 10_000  # past this many folders, the poll (each folder holds one kernel watch)

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name, NUL-padded)


@dataclass(frozen=True, slots=True)
class Changes:
    paths: frozenset[Path]  # files and folders named by events
    rescan: bool = False  # the events cannot say what changed: compare everything


class Inotify:
    """One inotify instance watching folders (not recursive by itself: each folder is added)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        init1 = getattr(self._libc, "inotify_init1", None)
        if init1 is None:
            raise OSError(errno.ENOSYS, "no inotify on this system")
        self._add_watch = self._libc.inotify_add_watch
        self._add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._add_watch.restype = ctypes.c_int
        self._rm_watch = self._libc.inotify_rm_watch
        self._rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)
        self._rm_watch.restype = ctypes.c_int
        fd = init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self.folders: dict[int, Path] = {}  # watch descriptor -> folder
        self.trees: set[int] = set()  # watch descriptors whose new sub-folders are watched too
        self._inodes: dict[int, tuple[int, int]] = {}  # the folder each descriptor watches, as (dev, inode)

    def add(self, folder: Path, tree: bool) -> bool:
        """Watch `folder` (a link is followed); False when it is gone or not a folder (raced with a delete).
        A folder watched already, under this path or another, keeps its one descriptor."""
        try:
            st = folder.stat()
        except OSError:
            return False
        wd = self._add_watch(self.fd, os.fsencode(folder), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return False
            raise OSError(err, f"inotify_add_watch {folder}: {os.strerror(err)}")
        if wd not in self.folders and len(self.folders) >= MAX_WATCHED_FOLDERS:
            self._rm_watch(self.fd, wd)
            raise OSError(errno.ENOSPC, f"more than {MAX_WATCHED_FOLDERS} folders to watch")
        self.folders[wd] = folder
        self._inodes[wd] = (st.st_dev, st.st_ino)
        if tree:
            self.trees.add(wd)
        return True

    def remove(self, wd: int) -> None:
        self._rm_watch(self.fd, wd)
        self.folders.pop(wd, None)
        self.trees.discard(wd)
        self._inodes.pop(wd, None)

    def prune(self) -> None:
        """Stop watching each folder whose path no longer leads to it: moved away or deleted, or (a link
        swapped, a folder renamed and another made in its place) now another folder."""
        for wd, folder in list(self.folders.items()):
            try:
                st = folder.stat()
            except OSError:
                self.remove(wd)
                continue
            if (st.st_dev, st.st_ino) != self._inodes.get(wd):
                self.remove(wd)

    def retain(self, folders: Mapping[Path, bool]) -> None:
        """Stop watching what is neither one of `folders` nor below one of them watched as a tree."""
        trees = [f for f, tree in folders.items() if tree]
        for wd, folder in list(self.folders.items()):
            if folder not in folders and not any(t in folder.parents for t in trees):
                self.remove(wd)

    def add_tree(self, root: Path, tree: bool = True) -> bool:
        """Watch `root` and, with `tree`, every real folder below it (links to folders are not followed: a
        ConfigMap volume's `..data` link points at a folder that is watched as itself). Without `tree`,
        `root` alone: the folder of a file named directly, where only renames next to it matter."""
        if not self.add(root, tree):
            return False
        if tree:
            for top, dirs, _ in os.walk(root, followlinks=False):
                for d in dirs:
                    self.add(Path(top) / d, True)
        return True

    def watch_missing(self, folders: Mapping[Path, bool]) -> list[Path]:
        """Watch each of `folders` that is not watched and exists now; returns those added."""
        watched = set(self.folders.values())
        return [folder for folder, tree in folders.items() if folder not in watched and self.add_tree(folder, tree)]

    def read(self, paths: dict[Path, bool]) -> bool:
        """Drain the pending events into `paths` (path -> whether its last event leaves it settled); returns
        whether a rescan is needed."""
        rescan = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return rescan
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    rescan = True
                    continue
                folder = self.folders.get(wd)
                if mask & IN_IGNORED:
                    self.folders.pop(wd, None)
                    self.trees.discard(wd)
                    self._inodes.pop(wd, None)
                    continue
                if folder is None:
                    continue
                path = folder / os.fsdecode(name) if name else folder
                # Settled unless a file was just created or written (a link is made whole at once).
                paths[path] = (not mask & (IN_CREATE | IN_MODIFY) or bool(mask & IN_ISDIR)
                               or (bool(mask & IN_CREATE) and path.is_symlink()))
                if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                    if wd in self.trees:
                        self.add_tree(path)  # files may be in it already: only a rescan finds them
                    rescan = True
                elif mask & (IN_DELETE_SELF | IN_MOVE_SELF) or (mask & IN_ISDIR and mask & IN_MOVED_FROM):
                    rescan = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def watch_folders(folders: Mapping[Path, bool], stop: asyncio.Event) -> AsyncIterator[Changes]:
    """Batches of changes in `folders` (folder -> whether the folders below it are watched too) until
    `stop` is set."""
    notify: Inotify | None = None
    try:
        notify = Inotify()
        for folder, tree in folders.items():
            notify.add_tree(folder, tree)
        async for changes in _notified(notify, folders, stop):
            yield changes
    except OSError as exc:
        log.warning("watching %s by polling every %.1fs: %s", ", ".join(map(str, folders)), POLL_INTERVAL_S,
                    exc.strerror or exc)
        if notify is not None:
            notify.close()
            notify = None
            yield Changes(frozenset(), rescan=True)  # what inotify may have missed while it failed
        async for changes in _poll(stop):
            yield changes
    finally:
        if notify is not None:
            notify.close()


async def _poll(stop: asyncio.Event) -> AsyncIterator[Changes]:
    while True:
        try:
            await asyncio.wait_for(stop.wait(), POLL_INTERVAL_S)
            return
        except TimeoutError:
            yield Changes(frozenset(), rescan=True)


async def _notified(notify: Inotify, folders: Mapping[Path, bool],
                    stop: asyncio.Event) -> AsyncIterator[Changes]:
    """inotify batches. A watched root that went away is looked for every POLL_INTERVAL_S until it is back
    (nothing above it is watched), then watched again. `folders` may change between batches (the caller
    adds the folders its links lead to): each batch starts by watching what it names and no more."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(notify.fd, ready.set)
    stopped = asyncio.ensure_future(stop.wait())
    readable: asyncio.Task[Any] | None = None
    try:
        while True:
            notify.retain(folders)
            notify.watch_missing(folders)
            missing = len(set(folders) - set(notify.folders.values()))
            readable = asyncio.ensure_future(ready.wait())
            await asyncio.wait({readable, stopped}, timeout=POLL_INTERVAL_S if missing else None,
                               return_when=asyncio.FIRST_COMPLETED)
            readable.cancel()
            if stop.is_set():
                return
            paths: dict[Path, bool] = {}
            rescan = False
            end = loop.time() + MAX_BATCH_S
            while True:
                ready.clear()
                rescan = notify.read(paths) or rescan
                if all(paths.values()):
                    break
                quiet = min(QUIET_S, end - loop.time())
                if quiet <= 0:
                    break
                try:
                    await asyncio.wait_for(ready.wait(), quiet)
                except TimeoutError:
                    break
            if any(p in folders for p in paths):
                rescan = True  # a watched folder (or the link to it) was made, replaced or removed
            if rescan:
                notify.prune()
            if notify.watch_missing(folders):
                rescan = True  # a folder back, or another one now at its path
            if rescan:
                for folder, tree in folders.items():  # folders made below them while events were lost
                    notify.add_tree(folder, tree)
            if paths or rescan:
                yield Changes(frozenset(paths), rescan)
    finally:
        stopped.cancel()
        if readable is not None:
            readable.cancel()
        loop.remove_reader(notify.fd)

"""The manifest source: files and directories given with `-f`, watched for changes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cilia.diagnostics import Issue
from cilia.errors import SourceError
from cilia.k8s.folderwatch import Changes, watch_folders
from cilia.k8s.manifest import MANIFEST_SUFFIXES, FileResult, expand_paths, parse_file
from cilia.k8s.store import Store

log = logging.getLogger("cilia.source.file")

# What identifies a file's content without reading it: the file a path leads to (links followed, so a
# ConfigMap volume's swap of its `..data` link shows), its size and its modification time.
Fingerprint = tuple[int, int, int, int]


def fingerprint(path: Path) -> Fingerprint | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileSource:
    """Loads manifests into the store and keeps them current as files change."""

    def __init__(self, paths: Sequence[str], store: Store) -> None:
        # Absolute, links kept: a file named through a ConfigMap volume's link follows the link's swaps.
        self._roots = [Path(os.path.abspath(p)) for p in paths]
        self._store = store
        self._loaded: dict[Path, Fingerprint | None] = {}  # every file whose objects the store holds
        self._links: dict[Path, Path] = {}  # loaded files that are links -> the folder of the file behind
        self._trees = frozenset(r for r in self._roots if r.is_dir())  # as at start, for if one goes away
        self._folders: dict[Path, bool] = {}  # what the watch watches (folder -> with the folders below)

    def load(self) -> None:
        for path in expand_paths(self._roots):
            self._load_file(path)

    def _load_file(self, path: Path, print_: Fingerprint | None = None) -> None:
        self._loaded[path] = print_ or fingerprint(path)
        if path.is_symlink():
            self._links[path] = Path(os.path.realpath(path)).parent
        else:
            self._links.pop(path, None)
        try:
            result = parse_file(path)
        except Exception as exc:  # a bug must not end the watch (and the server): keep what serves
            log.exception("%s: unexpected error while reading it", path)
            result = FileResult(str(path), False, (), (
                Issue("", "", f"not read (internal error: {type(exc).__name__}: {exc}); its previous "
                              "objects stay in use", str(path)),))
        self._store.replace_source(str(path), result)
        for issue in result.issues:
            log.warning("%s", issue, extra={"object": issue.object})

    def _forget_file(self, path: Path) -> None:
        self._links.pop(path, None)
        if self._loaded.pop(path, False) is not False:
            log.info("%s removed", path)
            self._store.forget_source(str(path))

    def _wanted(self, path: Path) -> bool:
        if path.suffix not in MANIFEST_SUFFIXES:
            return False
        for root in self._roots:
            if path == root:
                return True
            if root.is_dir() or not root.suffix:
                try:
                    rel = path.relative_to(root)
                except ValueError:
                    continue
                return not any(part.startswith(".") for part in rel.parts)
        return False

    def _current_files(self) -> list[Path]:
        files: list[Path] = []
        for root in self._roots:
            try:
                files += expand_paths([root])
            except SourceError:
                pass  # a root that went away: its files are removed; it is watched for coming back
        return files

    def rescan(self) -> None:
        """Bring the store in line with the files as they are now: read each file that is new or whose
        fingerprint changed, forget each that is gone."""
        current = self._current_files()
        for path in current:
            now = fingerprint(path)
            if path not in self._loaded or self._loaded[path] != now:
                self._load_file(path, now)
        present = set(current)
        for path in [p for p in self._loaded if p not in present]:
            self._forget_file(path)

    def apply(self, changes: Changes) -> None:
        """One batch of file events. Events on manifest files are read as they say; anything else (a
        folder, a link such as a ConfigMap volume's `..data`, a queue overflow) rescans, and so does any
        event while a loaded file is a link (the event names the file behind it, not the link)."""
        if changes.rescan or self._links or not all(self._wanted(p) for p in changes.paths):
            self.rescan()
        else:
            for path in sorted(changes.paths):
                if path.is_file():
                    self._load_file(path)
                else:
                    self._forget_file(path)
        self._plan_watch()

    def _plan_watch(self) -> None:
        """The folders to watch, in place (the watch reads them before each batch): each folder named
        with the folders below it; the folder of each file named directly, and of each root that is a link
        (a swap of the link shows there); and the folder behind each loaded link that leads out of them."""
        plan: dict[Path, bool] = {}
        for root in self._roots:
            tree = root in self._trees
            folder = root if tree else root.parent
            plan[folder] = plan.get(folder, False) or tree
            if tree and root.is_symlink():
                plan.setdefault(root.parent, False)
        trees = [f for f, tree in plan.items() if tree]
        for target in self._links.values():
            if not any(target == t or t in target.parents for t in trees):
                plan.setdefault(target, False)
        if plan != self._folders:
            self._folders.clear()
            self._folders.update(plan)

    async def watch(self, stop: asyncio.Event | None = None) -> None:
        """Follow changes until `stop` is set. A folder named is watched with the folders below it; for a
        file named directly, its folder alone (an editor's save by rename shows there)."""
        self._plan_watch()
        async for changes in watch_folders(self._folders, stop or asyncio.Event()):
            self.apply(changes)

"""The manifest source: files and directories given with `-f`, watched for changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import watchfiles

from cilia.diagnostics import Issue
from cilia.k8s.manifest import MANIFEST_SUFFIXES, FileResult, expand_paths, parse_file
from cilia.k8s.store import Store

log = logging.getLogger("cilia.source.file")


class FileSource:
    """Loads manifests into the store and keeps them current as files change."""

    def __init__(self, paths: Sequence[str], store: Store) -> None:
        self._roots = [Path(p).resolve() for p in paths]
        self._store = store
        self._known: set[str] = set()

    def load(self) -> None:
        for path in expand_paths(self._roots):
            self._load_file(path)

    def _load_file(self, path: Path) -> None:
        try:
            result = parse_file(path)
        except Exception as exc:  # a bug must not end the watch (and the server): keep what serves
            log.exception("%s: unexpected error while reading it", path)
            result = FileResult(str(path), False, (), (
                Issue("", "", f"not read (internal error: {type(exc).__name__}: {exc}); its previous "
                              "objects stay in use", str(path)),))
        self._known.add(str(path))
        self._store.replace_source(str(path), result)
        for issue in result.issues:
            log.warning("%s", issue, extra={"object": issue.object})

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

    async def watch(self, stop: asyncio.Event | None = None) -> None:
        """Follow changes until `stop` is set. Watches parent folders so renames are seen."""
        targets = sorted({str(r if r.is_dir() else r.parent) for r in self._roots})
        async for changes in watchfiles.awatch(*targets, stop_event=stop, debounce=50, step=20,
                                               recursive=True, force_polling=False):
            for path_str in sorted({p for _, p in changes}):
                path = Path(path_str)
                if not self._wanted(path):
                    continue
                if path.is_file():
                    self._load_file(path)
                elif str(path) in self._known:
                    self._known.discard(str(path))
                    log.info("%s removed", path)
                    self._store.forget_source(str(path))

"""The manifest folder watch: real files on a real inotify (and the stat poll it falls back to), as
editors, `kubectl cp` and Kubernetes ConfigMap volumes change them."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cilia.k8s import folderwatch
from cilia.k8s.filesource import FileSource
from cilia.k8s.store import Store
from support.manifests import service

WITHIN_S = 5.0


def vip_of(store: Store, name: str) -> str | None:
    obj = store.get("Service", "default", name)
    return None if obj is None else str(obj.raw["spec"]["clusterIP"])


@asynccontextmanager
async def watching(paths: list[Path]) -> AsyncIterator[Store]:
    store = Store()
    source = FileSource([str(p) for p in paths], store)
    source.load()
    stop = asyncio.Event()
    task = asyncio.create_task(source.watch(stop))
    await asyncio.sleep(0.05)  # the watches are in place
    try:
        yield store
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def until(pred: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN_S
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"not within {WITHIN_S}s: {what}")
        await asyncio.sleep(0.02)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def configmap_volume(root: Path, generation: str, files: dict[str, str]) -> None:
    """What the kubelet does to a ConfigMap volume: a new timestamped folder, `..data` swapped to it by
    a rename, each file a link through `..data`, the old folder removed."""
    data = root / f"..{generation}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(data.name)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    os.rename(tmp, root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")
    if old:
        for f in (root / old).iterdir():
            f.unlink()
        (root / old).rmdir()


@pytest.fixture(params=["inotify", "poll"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "poll":
        def no_inotify() -> None:
            raise OSError(38, "no inotify here (test)")
        monkeypatch.setattr(folderwatch.Inotify, "__init__", lambda self: no_inotify())
        monkeypatch.setattr(folderwatch, "POLL_INTERVAL_S", 0.1)
    return str(request.param)


async def test_edits_creations_and_deletions_are_followed(tmp_path: Path, mode: str) -> None:
    write(tmp_path / "a.yaml", service("a", vip="127.97.0.1"))
    async with watching([tmp_path]) as store:
        write(tmp_path / "a.yaml", service("a", vip="127.97.0.2"))
        await until(lambda: vip_of(store, "a") == "127.97.0.2", "an edit in place")
        write(tmp_path / "sub" / "deeper" / "b.yaml", service("b", vip="127.97.0.3"))
        await until(lambda: vip_of(store, "b") == "127.97.0.3", "a file in a new folder, written at once")
        write(tmp_path / "sub" / "deeper" / "b.yaml", service("b", vip="127.97.0.4"))
        await until(lambda: vip_of(store, "b") == "127.97.0.4", "an edit in a folder created while watching")
        (tmp_path / "a.yaml").unlink()
        await until(lambda: vip_of(store, "a") is None, "a deleted file's objects removed")
        # An editor's save: write a hidden temporary, rename it over the file.
        write(tmp_path / ".c.yaml.tmp", service("c", vip="127.97.0.5"))
        os.rename(tmp_path / ".c.yaml.tmp", tmp_path / "c.yaml")
        await until(lambda: vip_of(store, "c") == "127.97.0.5", "a file renamed into place")
        write(tmp_path / ".hidden" / "d.yaml", service("d", vip="127.97.0.6"))
        write(tmp_path / "notes.txt", service("e", vip="127.97.0.7"))
        write(tmp_path / "c.yaml", service("c", vip="127.97.0.8"))
        await until(lambda: vip_of(store, "c") == "127.97.0.8", "the next edit")
        assert vip_of(store, "d") is None and vip_of(store, "e") is None  # hidden folders, other suffixes


async def test_a_configmap_volume_update_is_followed(tmp_path: Path, mode: str) -> None:
    configmap_volume(tmp_path, "2026_12_06_01", {"app.yaml": service("app", vip="127.97.1.1")})
    async with watching([tmp_path]) as store:
        assert vip_of(store, "app") == "127.97.1.1"
        configmap_volume(tmp_path, "2026_12_06_02", {"app.yaml": service("app", vip="127.97.1.2")})
        await until(lambda: vip_of(store, "app") == "127.97.1.2", "the swapped ..data link")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("..2026")] == ["..2026_12_06_02"]


async def test_a_file_named_through_a_configmap_link_follows_the_swap(tmp_path: Path, mode: str) -> None:
    configmap_volume(tmp_path, "g1", {"app.yaml": service("app", vip="127.97.2.1")})
    async with watching([tmp_path / "app.yaml"]) as store:
        assert vip_of(store, "app") == "127.97.2.1"
        configmap_volume(tmp_path, "g2", {"app.yaml": service("app", vip="127.97.2.2")})
        await until(lambda: vip_of(store, "app") == "127.97.2.2", "the file behind the link")


async def test_a_removed_folder_is_watched_again_when_it_comes_back(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "manifests"
    write(root / "a.yaml", service("a", vip="127.97.3.1"))
    async with watching([root]) as store:
        (root / "a.yaml").unlink()
        root.rmdir()
        await until(lambda: vip_of(store, "a") is None, "the folder's objects removed with it")
        write(root / "a.yaml", service("a", vip="127.97.3.2"))
        await until(lambda: vip_of(store, "a") == "127.97.3.2", "the folder created again")
        write(root / "a.yaml", service("a", vip="127.97.3.3"))
        await until(lambda: vip_of(store, "a") == "127.97.3.3", "an edit in the new folder")


async def test_inotify_watching_runs_no_thread_and_no_timer(tmp_path: Path) -> None:
    """Nothing runs while nothing changes: no helper thread, and the event loop has no timer of ours."""
    write(tmp_path / "a.yaml", service("a", vip="127.97.4.1"))
    threads = threading.active_count()
    async with watching([tmp_path]) as store:
        await asyncio.sleep(0.1)
        assert threading.active_count() == threads
        loop = asyncio.get_running_loop()
        timers = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
        assert timers == [], timers
        write(tmp_path / "a.yaml", service("a", vip="127.97.4.2"))
        await until(lambda: vip_of(store, "a") == "127.97.4.2", "an edit")


async def test_a_queue_overflow_rescans(tmp_path: Path) -> None:
    """An overflowed event queue says nothing of what changed: everything is compared again."""
    write(tmp_path / "a.yaml", service("a", vip="127.97.5.1"))
    store = Store()
    source = FileSource([str(tmp_path)], store)
    source.load()
    write(tmp_path / "a.yaml", service("a", vip="127.97.5.22"))  # the size differs: a new fingerprint
    source.apply(folderwatch.Changes(frozenset(), rescan=True))
    assert vip_of(store, "a") == "127.97.5.22"


async def test_a_settled_change_is_not_held_back_and_a_file_being_written_is_read_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename into place is read at once (the server's debounce is the only wait); a file still open for
    writing is read once its writer is quiet, not half-written."""
    monkeypatch.setattr(folderwatch, "QUIET_S", 1.0)
    reads: list[str] = []
    real_load = FileSource._load_file

    def counting_load(self: FileSource, path: Path, *rest: Any) -> None:
        reads.append(path.name)
        real_load(self, path, *rest)

    monkeypatch.setattr(FileSource, "_load_file", counting_load)
    async with watching([tmp_path]) as store:
        loop = asyncio.get_running_loop()
        start = loop.time()
        write(tmp_path / ".a.yaml.tmp", service("a", vip="127.97.6.1"))
        os.replace(tmp_path / ".a.yaml.tmp", tmp_path / "a.yaml")
        await until(lambda: vip_of(store, "a") == "127.97.6.1", "a file renamed into place")
        assert loop.time() - start < folderwatch.QUIET_S / 2
        text = service("b", vip="127.97.6.2")
        with open(tmp_path / "b.yaml", "w") as f:  # noqa: ASYNC230 (the test is the slow writer)
            f.write(text[:len(text) // 2])
            f.flush()
            await asyncio.sleep(0.3)
            f.write(text[len(text) // 2:])
        await until(lambda: vip_of(store, "b") == "127.97.6.2", "the file once closed")
        assert reads.count("b.yaml") == 1, reads
        assert not [i for i in store.issues() if "b.yaml" in i.location]


async def test_a_file_named_directly_watches_its_folder_alone(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`-f ./app.yaml` in a big folder must not put a watch on every folder below it."""
    watched: list[Path] = []
    real_add = folderwatch.Inotify.add

    def recording_add(self: folderwatch.Inotify, folder: Path, tree: bool) -> bool:
        watched.append(folder)
        return real_add(self, folder, tree)

    monkeypatch.setattr(folderwatch.Inotify, "add", recording_add)
    for sub in ("a/b/c", "d/e"):
        (tmp_path / "big" / sub).mkdir(parents=True)
    write(tmp_path / "big" / "app.yaml", service("app", vip="127.97.7.1"))
    write(tmp_path / "tree" / "x" / "svc.yaml", service("x", vip="127.97.7.2"))
    async with watching([tmp_path / "big" / "app.yaml", tmp_path / "tree"]) as store:
        assert sorted(p.relative_to(tmp_path).as_posix() for p in watched) == ["big", "tree", "tree/x"]
        (tmp_path / "big" / "new").mkdir()  # next to a named file: not watched
        write(tmp_path / "tree" / "y" / "svc.yaml", service("y", vip="127.97.7.3"))  # in a named folder: watched
        await until(lambda: vip_of(store, "y") == "127.97.7.3", "a file in a new folder of a named folder")
        write(tmp_path / "big" / ".app.yaml.tmp", service("app", vip="127.97.7.4"))
        os.replace(tmp_path / "big" / ".app.yaml.tmp", tmp_path / "big" / "app.yaml")
        await until(lambda: vip_of(store, "app") == "127.97.7.4", "the named file saved by rename")
        assert "big/new" not in [p.relative_to(tmp_path).as_posix() for p in watched]
        assert "tree/y" in [p.relative_to(tmp_path).as_posix() for p in watched]


async def test_a_folder_renamed_away_and_made_again_is_watched_again(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", service("a", vip="127.97.8.1"))
    write(root / "sub" / "b.yaml", service("b", vip="127.97.8.2"))
    async with watching([root]) as store:
        os.rename(root / "sub", tmp_path / "away")  # a sub-folder moved out of the tree
        await until(lambda: vip_of(store, "b") is None, "the moved-out folder's objects removed")
        write(tmp_path / "away" / "c.yaml", service("c", vip="127.97.8.3"))
        os.rename(root, tmp_path / "old")  # the root itself renamed; later another made in its place
        await until(lambda: vip_of(store, "a") is None, "the renamed root's objects removed")
        write(root / "a.yaml", service("a", vip="127.97.8.4"))
        await until(lambda: vip_of(store, "a") == "127.97.8.4", "the new folder at the root's path")
        write(root / "a.yaml", service("a", vip="127.97.8.5"))
        await until(lambda: vip_of(store, "a") == "127.97.8.5", "an edit in it")
        write(tmp_path / "old" / "a.yaml", service("a", vip="127.97.8.6"))  # the renamed folder: not watched
        write(tmp_path / "away" / "c.yaml", service("c", vip="127.97.8.7"))
        write(root / "d.yaml", service("d", vip="127.97.8.8"))
        await until(lambda: vip_of(store, "d") == "127.97.8.8", "the next edit")
        assert vip_of(store, "a") == "127.97.8.5" and vip_of(store, "c") is None


async def test_links_out_of_the_tree_and_a_linked_root_are_followed(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    write(out / "a.yaml", service("a", vip="127.97.9.1"))
    root = tmp_path / "m"
    root.mkdir()
    (root / "a.yaml").symlink_to(out / "a.yaml")
    write(tmp_path / "rev1" / "b.yaml", service("b", vip="127.97.9.2"))
    write(tmp_path / "rev2" / "b.yaml", service("b", vip="127.97.9.3"))
    (tmp_path / "cur").symlink_to("rev1")
    async with watching([root, tmp_path / "cur"]) as store:
        write(out / "a.yaml", service("a", vip="127.97.9.4"))
        await until(lambda: vip_of(store, "a") == "127.97.9.4", "the file behind a link out of the tree")
        (tmp_path / "cur.tmp").symlink_to("rev2")  # a git-sync style swap of the folder named
        os.rename(tmp_path / "cur.tmp", tmp_path / "cur")
        await until(lambda: vip_of(store, "b") == "127.97.9.3", "the folder the swapped link leads to")
        write(tmp_path / "rev2" / "b.yaml", service("b", vip="127.97.9.5"))
        await until(lambda: vip_of(store, "b") == "127.97.9.5", "an edit behind the swapped link")

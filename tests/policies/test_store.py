"""PolicyStore: atomic swap, failed reloads keep the old policy, the watcher."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import anyio
import pytest

from policies.compiled import CompiledPolicy
from policies.store import PolicyLoadError, PolicyStore
from tests.policies.conftest import MINIMAL, THREE


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, CompiledPolicy | None, str | None]] = []
        self.reloaded: anyio.Event | None = None  # set on "ok", for the watcher tests

    def __call__(self, result, policy, message) -> None:
        self.events.append((result, policy, message))
        if result == "ok" and self.reloaded is not None:
            self.reloaded.set()


def make_store(path: Path, recorder: Recorder | None = None) -> PolicyStore:
    return PolicyStore(path, skills={}, discrimination=1.0, on_reload=recorder)


def test_loads_at_construction(write):
    path = write(MINIMAL)
    recorder = Recorder()
    store = make_store(path, recorder)
    assert store.current.sha256 == hashlib.sha256(MINIMAL.encode()).hexdigest()
    assert store.current.path == str(path) and store.path == str(path)
    assert recorder.events == []  # the first load is not a reload


def test_bad_first_load_raises_a_readable_error(write):
    path = write(THREE.replace("default_route: chat", "default_route: nope"))
    with pytest.raises(PolicyLoadError) as info:
        make_store(path)
    line = THREE.splitlines().index("default_route: chat") + 1
    assert str(info.value) == (
        f"{path}:{line}: default_route: unknown route 'nope' (declared: chat, fixed)"
    )


def test_reload_swaps_and_reports(write):
    path = write(MINIMAL)
    recorder = Recorder()
    store = make_store(path, recorder)
    old = store.current
    path.write_text(THREE)
    assert store.reload() is True
    assert store.current is not old and set(store.current.routes) == {"chat", "fixed"}
    assert recorder.events == [("ok", store.current, None)]
    assert old.default_route == "auto"  # a request holding the old policy keeps it whole


def test_bad_reload_keeps_the_old_policy(write):
    path = write(MINIMAL)
    recorder = Recorder()
    store = make_store(path, recorder)
    old = store.current
    path.write_text(MINIMAL.replace("version: 1", "version: one"))
    assert store.reload() is False
    assert store.current is old
    ((result, policy, message),) = recorder.events
    assert (result, policy) == ("error", None)
    assert message == f"{path}:1: version: Input should be 1"
    path.unlink()
    assert store.reload() is False and store.current is old
    assert recorder.events[-1] == (
        "error",
        None,
        f"{path}:1: cannot read: No such file or directory",
    )


def test_works_without_a_callback(write):
    path = write(MINIMAL)
    store = make_store(path)
    path.write_text("version: [")
    assert store.reload() is False
    path.write_text(THREE)
    assert store.reload() is True


def test_concurrent_readers_always_see_a_complete_policy(write):
    texts = [MINIMAL, THREE]
    shas = {hashlib.sha256(t.encode()).hexdigest(): t for t in texts}
    routes = {
        hashlib.sha256(t.encode()).hexdigest(): r
        for t, r in zip(texts, [{"auto"}, {"chat", "fixed"}], strict=True)
    }
    path = write(MINIMAL)
    store = make_store(path)
    stop = threading.Event()
    failures: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            policy = store.current  # one read per "request"
            if policy.sha256 not in shas or set(policy.routes) != routes[policy.sha256]:
                failures.append(policy.sha256)
            if policy.default_route not in policy.routes:
                failures.append("default")
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(60):
        path.write_text(texts[i % 2])
        assert store.reload() is True
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and reads[0] > 0


def test_concurrent_reloads_are_serialised(write):
    path = write(MINIMAL)
    store = make_store(path)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store.reload())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_poll_reloads_only_when_the_content_changes(write):
    path = write(MINIMAL)
    recorder = Recorder()
    store = make_store(path, recorder)
    assert store.poll() is False  # nothing changed
    bump_mtime(path)  # touched, same bytes: re-read, same sha, no reload
    assert store.poll() is False and recorder.events == []
    path.write_text(THREE)
    bump_mtime(path)
    assert store.poll() is True and recorder.events[-1][0] == "ok"


def test_poll_does_not_retry_the_same_bad_content(write):
    path = write(MINIMAL)
    recorder = Recorder()
    store = make_store(path, recorder)
    path.write_text("version: 2\n" + MINIMAL.split("\n", 1)[1])
    bump_mtime(path)
    assert store.poll() is False
    assert [e[0] for e in recorder.events] == ["error"]
    bump_mtime(path)  # same bad bytes again
    assert store.poll() is False and len(recorder.events) == 1
    path.write_text(THREE)
    bump_mtime(path)
    assert store.poll() is True


def test_poll_reports_a_vanished_file_once(write):
    path = write(MINIMAL)
    recorder = Recorder()
    store = make_store(path, recorder)
    old = store.current
    path.unlink()
    assert store.poll() is False and store.poll() is False
    assert recorder.events == [("error", None, f"{path}: cannot stat the policy file")]
    path.write_text(THREE)
    assert store.poll() is True and store.current is not old


def test_poll_reports_an_unreadable_file(write, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(MINIMAL)
    recorder = Recorder()
    store = make_store(path, recorder)
    path.unlink()
    path.mkdir()  # stat works, reading does not
    assert store.poll() is False
    assert recorder.events[0][0] == "error" and "cannot read" in str(recorder.events[0][2])


@pytest.mark.anyio
async def test_watch_picks_up_a_changed_file(write):
    path = write(MINIMAL)
    recorder = Recorder()
    recorder.reloaded = anyio.Event()
    store = make_store(path, recorder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.watch, 0.01)
        await anyio.sleep(0.05)
        path.write_text(THREE)
        bump_mtime(path)
        with anyio.fail_after(5):
            await recorder.reloaded.wait()
        tg.cancel_scope.cancel()
    assert [e[0] for e in recorder.events] == ["ok"]
    assert store.current.default_route == "chat"


@pytest.mark.anyio
async def test_watch_follows_a_configmap_symlink_swap(tmp_path):
    """Kubernetes mounts policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/."""
    first, second = tmp_path / "..2026_01", tmp_path / "..2026_02"
    first.mkdir()
    second.mkdir()
    (first / "policy.yaml").write_text(MINIMAL)
    (second / "policy.yaml").write_text(THREE)
    os.symlink(first.name, tmp_path / "..data")
    os.symlink("..data/policy.yaml", tmp_path / "policy.yaml")
    recorder = Recorder()
    recorder.reloaded = anyio.Event()
    store = make_store(tmp_path / "policy.yaml", recorder)
    assert store.current.default_route == "auto"
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.watch, 0.01)
        # the atomic swap kubelet does: new symlink, then rename over ..data
        os.symlink(second.name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        with anyio.fail_after(5):
            await recorder.reloaded.wait()
        tg.cancel_scope.cancel()
    assert store.current.default_route == "chat"
    assert store.current.sha256 == hashlib.sha256(THREE.encode()).hexdigest()


def test_retarget_recompiles_the_same_file_with_new_skills(write):
    path = write(MINIMAL)
    recorder = Recorder()
    store = make_store(path, recorder)
    old = store.current
    new = store.retarget({}, 2.0)
    assert store.current is new and new is not old and new.discrimination == 2.0
    assert new.sha256 == old.sha256 and recorder.events[-1] == ("ok", new, None)
    swapped: list[object] = []
    again = store.retarget({}, 3.0, swap=swapped.append)
    assert swapped == [again] and store.current.discrimination == 3.0

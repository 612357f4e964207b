"""PolicyStore: the live policy, swapped atomically on reload, and a file watcher.

A request reads ``store.current`` once and keeps that object, so it sees one consistent
policy even when a reload lands meanwhile. A reload builds the new policy completely
before replacing the single reference; a file that fails to load never replaces a good
policy. ``watch()`` polls the file (following symlinks, so a Kubernetes ConfigMap update,
which swaps a ``..data`` symlink, is seen) and reloads when its content hash changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from typing import Generic, Literal, TypeVar

from policies.compiled import CompiledPolicy
from policies.errors import PolicyLoadError
from policies.loader import build_policy, read_bytes

__all__ = ["OnReload", "PolicyLoadError", "PolicyStore", "WatchedFile"]

T = TypeVar("T")

OnReload = Callable[[Literal["ok", "error"], CompiledPolicy | None, str | None], None]
"""``on_reload(result, policy, message)``: ("ok", new policy, None) or ("error", None, why)."""

_Signature = tuple[int, int, int]  # st_mtime_ns, st_ino, st_size of the resolved file


class WatchedFile(Generic[T]):
    """A value built from one file's bytes, rebuilt when the file's content changes.

    ``build(data)`` raises ``PolicyLoadError`` for content that must not go live; the
    previous value is kept and the failed content is not retried until it changes.
    ``sha_of(value)`` is the content hash a value was built from. Subclasses: PolicyStore
    here, ``gateway.tenants.TenantStore``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        build: Callable[[bytes], T],
        sha_of: Callable[[T], str],
        on_reload: Callable[[Literal["ok", "error"], T | None, str | None], None] | None = None,
        what: str = "file",
    ) -> None:
        self.path = os.fspath(path)
        self._what = what
        self._build = build
        self._sha_of = sha_of
        self._on_reload = on_reload
        # one build at a time (re-entrant: a signal may land mid-poll); readers never take it
        self._lock = threading.RLock()
        self._signature = self._stat()
        self._data = read_bytes(self.path)
        self._current = build(self._data)
        self._failed_sha: str | None = None

    @property
    def current(self) -> T:
        """The live value (one attribute read; never a half-built one)."""
        return self._current

    def reload(self) -> bool:
        """Re-read and rebuild, then swap it in; False (old one kept) on failure.

        Safe to call from the event loop (e.g. a SIGHUP handler scheduled with
        ``loop.call_soon``) and from other threads: builds are serialised by a lock.
        """
        with self._lock:
            self._signature = self._stat()
            try:
                data = read_bytes(self.path)
            except PolicyLoadError as exc:
                self._report("error", None, str(exc))
                return False
            return self._swap(data)

    async def watch(self, interval_s: float = 2.0) -> None:
        """Poll the file every ``interval_s`` seconds and reload when its content changes.

        Each tick stats the resolved path; only when mtime, inode or size changed is the
        file read and hashed, and only a new sha256 triggers a rebuild. A content that
        already failed to load is not retried until it changes. Runs until cancelled.
        """
        while True:
            await asyncio.sleep(interval_s)
            self.poll()

    def poll(self) -> bool:
        """One watcher tick; True when a new value was swapped in."""
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return False
            self._signature = signature
            if signature is None:
                self._report("error", None, f"{self.path}: cannot stat the {self._what}")
                return False
            try:
                data = read_bytes(self.path)
            except PolicyLoadError as exc:
                self._report("error", None, str(exc))
                return False
            sha = hashlib.sha256(data).hexdigest()
            if sha in (self._sha_of(self._current), self._failed_sha):
                return False
            return self._swap(data)

    def _swap(self, data: bytes) -> bool:
        try:
            value = self._build(data)
        except PolicyLoadError as exc:
            self._failed_sha = hashlib.sha256(data).hexdigest()
            self._report("error", None, str(exc))
            return False
        self._failed_sha = None
        self._data = data
        self._current = value
        self._report("ok", value, None)
        return True

    def _stat(self) -> _Signature | None:
        try:
            st = os.stat(self.path)  # follows symlinks: the ConfigMap's current target
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _report(self, result: Literal["ok", "error"], value: T | None, message: str | None) -> None:
        if self._on_reload is not None:
            self._on_reload(result, value, message)


class PolicyStore(WatchedFile[CompiledPolicy]):
    """Holds the live ``CompiledPolicy`` for one policy file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        skills: Mapping[str, float],
        discrimination: float,
        on_reload: OnReload | None = None,
    ) -> None:
        """Load ``path`` now; raises ``PolicyLoadError`` (a readable message) if it fails.

        The first load does not call ``on_reload``: read ``current`` for the initial policy.
        """
        self._skills = dict(skills)
        self._discrimination = discrimination
        super().__init__(
            path,
            build=self._build_policy,
            sha_of=lambda p: p.sha256,
            on_reload=on_reload,
            what="policy file",
        )

    def retarget(
        self,
        skills: Mapping[str, float],
        discrimination: float,
        swap: Callable[[CompiledPolicy], None] | None = None,
    ) -> CompiledPolicy:
        """Recompile the live policy file with a new estimator's skills and discrimination.

        Raises ``PolicyLoadError`` (nothing changed) when the policy does not compile with
        them, e.g. a bar route's model has no skill in the new estimator. ``swap(policy)``
        runs under the build lock just before the new policy goes live, so a caller can
        switch the estimator in the same step."""
        with self._lock:
            policy = build_policy(
                self._data, path=self.path, skills=skills, discrimination=discrimination
            )
            self._skills, self._discrimination = dict(skills), discrimination
            if swap is not None:
                swap(policy)
            self._current = policy
            self._report("ok", policy, None)
            return policy

    def _build_policy(self, data: bytes) -> CompiledPolicy:
        return build_policy(
            data, path=self.path, skills=self._skills, discrimination=self._discrimination
        )

"""The live estimator: P(acceptable) per candidate for each request, and its hot reload.

``EstimatorStore.score(policy, route, messages, tools, task)`` returns the difficulty and,
when the artifact has learned heads for some of the route's models, their probabilities by
catalog id (``policies.engine.RouteInput.p``); ``task`` is the request's workflow tag
(``x-effgate-task`` or ``metadata.task``), which heads fitted with tags use. Scorers are
compiled once per (policy, estimator) pair, lazily on the first request that needs one.

The artifact directory named by ``EFFGATE_ESTIMATOR_PATH`` is watched like the policy file:
when a file in it changes, the new artifact is loaded and checked, the live policy is
recompiled with its skills, and both go live in one step. A change is read once the files
have stayed the same for one tick (a write in progress is not read half done). An artifact
that fails to load, or with which the policy does not compile, never replaces the running
one, and is not read again until its files change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from policies.compiled import CompiledPolicy
from policies.errors import PolicyLoadError
from policies.store import PolicyStore

log = logging.getLogger("effgate")

# (difficulty, P by catalog id or None, what the request's record can reuse: the signature
# where the scorer made one, else the dense features of the prior's difficulty, or None)
Scored = tuple[float, Mapping[str, float] | None, Any]
OnReload = Callable[[Literal["ok", "error"], Any, str | None], None]


class Estimator(Protocol):
    """What the gateway needs of an estimator (``router_models.Estimator``, or a test's)."""

    @property
    def skills(self) -> Mapping[str, float]: ...

    @property
    def discrimination(self) -> float: ...

    def difficulty(self, messages: list[object]) -> float: ...


ScoreFn = Callable[[Any, Any, str | None], Scored]


def _scorers(est: Any, policy: CompiledPolicy) -> dict[str, ScoreFn]:
    make = getattr(est, "scorer", None)
    out: dict[str, ScoreFn] = {}
    for name, route in policy.routes.items():
        if make is not None:
            out[name] = make([(m.id, m.upstream_model) for m in route.scored]).score
        else:  # an estimator without per-model heads: difficulty only

            def plain(
                messages: Any,
                tools: Any,
                task: str | None,
                _d: Callable[[Any], float] = est.difficulty,
            ) -> Scored:
                return _d(messages), None, None

            out[name] = plain
    return out


def artifact_sha256(directory: Path) -> str:
    """sha256 over every file of an artifact directory (names and contents, sorted)."""
    h = hashlib.sha256()
    for p in sorted(q for q in directory.iterdir() if q.is_file()):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


class EstimatorStore:
    """Holds the live estimator and the per-route scorers built from it."""

    def __init__(
        self,
        estimator: Any,
        *,
        policies: PolicyStore,
        path: Path | None = None,
        load: Callable[[Path], Any] | None = None,
        on_reload: OnReload | None = None,
    ) -> None:
        self._current = estimator
        self._policies = policies
        self.path = path
        self._load = load
        self._on_reload = on_reload
        self._lock = threading.RLock()
        self._built_for: tuple[CompiledPolicy, Any] | None = None
        self._scorers: dict[str, ScoreFn] = {}
        self._signature = self._stat()
        self._settling = self._signature
        self.sha256 = self._sha() or ""

    @property
    def current(self) -> Any:
        return self._current

    def score(
        self,
        policy: CompiledPolicy,
        route: str,
        messages: Sequence[Any],
        tools: Sequence[Any] | None = None,
        task: str | None = None,
    ) -> Scored:
        """(difficulty, P by catalog id or None, the signature the scorer made or None) for
        one request on ``route`` of ``policy``."""
        est = self._current
        built = self._built_for
        if built is None or built[0] is not policy or built[1] is not est:
            self._scorers = _scorers(est, policy)
            self._built_for = (policy, est)
        return self._scorers[route](messages, tools, task)

    def poll(self) -> bool:
        """One watcher tick: True when a new artifact went live."""
        if self.path is None or self._load is None:
            return False
        with self._lock:
            signature = self._stat()
            if signature != self._settling:
                self._settling = signature  # changed since the last tick: let a write finish
                return False
            if signature == self._signature:
                return False
            self._signature = signature
            sha = self._sha()
            if sha is None or sha == self.sha256:
                return False
            return self._swap(sha)

    def reload(self) -> bool:
        """Load the artifact now (SIGHUP): True when it went live."""
        if self.path is None or self._load is None:
            return False
        with self._lock:
            self._signature = self._stat()
            sha = self._sha()
            return sha is not None and sha != self.sha256 and self._swap(sha)

    async def watch(self, interval_s: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.poll()

    def _swap(self, sha: str) -> bool:
        assert self.path is not None and self._load is not None
        try:
            est = self._load(self.path)
        except Exception as exc:  # ArtifactError, or anything a broken file raises
            self._report("error", None, f"{self.path}: {exc}")
            return False

        def go_live(_policy: CompiledPolicy) -> None:
            self._current = est
            self.sha256 = sha

        try:
            self._policies.retarget(dict(est.skills), float(est.discrimination), swap=go_live)
        except (PolicyLoadError, ValueError) as exc:
            self._report("error", None, f"{self.path}: the policy does not compile with it: {exc}")
            return False
        self._report("ok", est, None)
        return True

    def _files(self) -> list[Path]:
        assert self.path is not None
        try:
            return sorted(p for p in self.path.iterdir() if p.is_file())
        except OSError:
            return []

    def _stat(self) -> tuple[tuple[str, int, int, int], ...] | None:
        if self.path is None:
            return None
        out = []
        for p in self._files():
            try:
                st = os.stat(p)  # follows symlinks: a ConfigMap's current target
            except OSError:
                continue
            out.append((p.name, st.st_mtime_ns, st.st_ino, st.st_size))
        return tuple(out)

    def _sha(self) -> str | None:
        if self.path is None:
            return None
        try:
            return artifact_sha256(self.path)
        except OSError:
            return None

    def _report(self, result: Literal["ok", "error"], est: Any, message: str | None) -> None:
        if result == "error":
            log.error("estimator reload failed, keeping the running one: %s", message)
        else:
            log.info("estimator loaded: %s (sha256 %s)", self.path, self.sha256[:12])
        if self._on_reload is not None:
            self._on_reload(result, est, message)

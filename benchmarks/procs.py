"""Server processes for a benchmark run: start (optionally pinned to cores), watch, measure, stop.

Pinning uses ``taskset -c``, which execs the command, so the pid we hold is the server's own and
``/proc/<pid>/status`` tells its memory.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_LISTENING = re.compile(rb"listening on http://[^:\s]+:(\d+)")


@dataclass(frozen=True, slots=True)
class Pinning:
    """CPU lists for ``taskset -c``: the measured server, and everything else (fakes, client)."""

    server: str
    client: str


def parse_cores(spec: str) -> Pinning | None:
    """``"off"`` -> None; ``"1:0"`` -> server on CPU 1, fakes and load generator on CPU 0."""
    if spec == "off":
        return None
    server, sep, client = spec.partition(":")
    cpu_list = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
    if not sep or not cpu_list.match(server) or not cpu_list.match(client):
        raise ValueError(f"--cores takes 'off' or SERVER:CLIENT cpu lists like '1:0', not {spec!r}")
    return Pinning(server, client)


def cpu_set(cpus: str) -> set[int]:
    out: set[int] = set()
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def pinning_available(pin: Pinning) -> str | None:
    """None when ``pin`` can be applied here, else why not."""
    if shutil.which("taskset") is None:
        return "taskset is not installed"
    have = os.sched_getaffinity(0)
    missing = (cpu_set(pin.server) | cpu_set(pin.client)) - have
    if missing:
        return f"CPUs {sorted(missing)} are not available (have {sorted(have)})"
    return None


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def session_cpu_s(leader: int) -> float:
    """User + system CPU seconds of every live process in ``leader``'s session (its workers)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # the command name may hold spaces
        if int(fields[3]) == leader:  # field 6, session id
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15, utime and stime
    return total * _TICK_S


def free_port() -> int:
    """A port free now, for a child process to bind later. Drawn below Linux's ephemeral
    range (32768-60999): a port 0 bind elsewhere (tests, other benchmarks' clients) never
    takes one from there in the gap between this check and the child's bind."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM); 0 when it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else 0


@dataclass(frozen=True, slots=True)
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float  # time.monotonic() just before the process was spawned

    @property
    def pid(self) -> int:
        return self.popen.pid

    def status_kb(self, field: str) -> int:
        return status_kb(self.pid, field)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code}:\n{self.tail()}")

    def wait_port(self, timeout_s: float) -> int:
        """The port from a ``listening on http://host:PORT`` line in the log (fake upstreams)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.check_alive()
            m = _LISTENING.search(self.log.read_bytes())
            if m:
                return int(m.group(1))
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} did not report its port in {timeout_s:g} s")

    def wait_accepting(self, port: int, timeout_s: float) -> None:
        """Until a TCP connection to 127.0.0.1:``port`` (which this process binds) succeeds;
        RuntimeError if the process exits first, TimeoutError after ``timeout_s``."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"{self.name} did not accept on port {port} in {timeout_s:g} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        # the process leads its own session (spawn), so this reaches its workers and no one else
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    cpus: str | None,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start ``argv`` (under ``taskset -c cpus`` when given), stdout and stderr to a log file."""
    log = log_dir / f"{name}.log"
    cmd = ["taskset", "-c", cpus, *argv] if cpus is not None else list(argv)
    full_env = {**os.environ, **(env or {})}
    started = time.monotonic()
    with log.open("wb") as fh:
        popen = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    return Proc(name, popen, log, started)


@contextlib.contextmanager
def pinned_self(cpus: str | None) -> Iterator[None]:
    """Pin this process (the load generator) to ``cpus`` for the block, then restore."""
    before = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpu_set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)

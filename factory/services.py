"""Local services the factory starts for itself: the Prefect server (SQLite, under the factory root) and gunicorn.

Stdlib only: each service is a child process in its own session, readiness is one HTTP GET, and `stop_processes`
stops a child with everything it started (SIGTERM to its process groups, SIGKILL after a grace period).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from dataclasses import dataclass, field, replace
from pathlib import Path

from factory.server_config import EffectiveConfig, load_server_config, server_environment
from factory.settings import Settings


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Prefect settings that keep its database, results and home under the factory root, offline."""
    return {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.prefect_home / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }


def apply_prefect_environment(settings: Settings) -> None:
    """Set the defaults above in this process (before Prefect is imported); explicit variables win."""
    for key, value in prefect_environment(settings).items():
        os.environ.setdefault(key, value)


OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")


def with_openblas(env: dict[str, str]) -> dict[str, str]:
    """`env` plus an LD_PRELOAD of OpenBLAS, when it is installed (`make blas`) and not switched off.

    The mlx-cpu wheel links a reference BLAS; preloading OpenBLAS makes MLX's float32 matrix products 14-48x faster
    on these x86 CPUs (quantized and float16 kernels do not use BLAS). FACTORY_OPENBLAS=0 turns it off.
    """
    if env.get("FACTORY_OPENBLAS") == "0" or not OPENBLAS.exists() or str(OPENBLAS) in env.get("LD_PRELOAD", ""):
        return env
    return {**env, "LD_PRELOAD": " ".join(filter(None, [env.get("LD_PRELOAD"), str(OPENBLAS)]))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- stopping child processes

# How long children get between SIGTERM and SIGKILL. Service managers and container runtimes commonly allow 10 s in
# all before they SIGKILL the factory itself (whose children would then outlive it), and `factory up` stops in two
# rounds (its other children, then the Prefect server they report to); each of them takes about a second when idle.
STOP_GRACE_S = 4.0
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _handling(signums: Iterable[int], handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for `signums` until the block ends (main thread only). A signal the parent process made this one
    ignore (nohup; SIGINT for a shell script's background job) stays ignored, one handled outside Python is left be."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in signums}
    previous = {signum: old for signum, old in previous.items() if old is not None and old is not signal.SIG_IGN}
    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def exit_on_signals() -> contextlib.AbstractContextManager[None]:
    """SIGTERM and SIGHUP raise SystemExit(128 + signal) in the main thread, as Ctrl-C raises KeyboardInterrupt, so the
    `finally` blocks that stop child processes run."""
    return _handling(EXIT_SIGNALS, _raise_exit)


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, identity) of every live process; zombies count as gone. The identity (start
    time) tells a pid that was reused apart from the process seen before."""
    table: dict[int, tuple[int, int, str]] = {}
    if os.path.exists("/proc/self/stat"):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as file:
                    fields = file.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces and ')'
            except OSError:
                continue
            if fields[0] not in (b"Z", b"X"):
                table[int(name)] = (int(fields[1]), int(fields[2]), fields[19].decode())
        return table
    try:  # macOS and other Unixes
        out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "pgid=", "-o", "stat=", "-o", "lstart="],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return table
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and not parts[3].startswith("Z"):
            table[int(parts[0])] = (int(parts[1]), int(parts[2]), parts[4])
    return table


def _tree(processes: Sequence[subprocess.Popen], pids: set[int],
          table: dict[int, tuple[int, int, str]]) -> dict[int, str]:
    """pid -> identity of the processes, of every process in the groups they lead (a child can outlive its parent
    there) and of all their descendants. A pid stays in use while it names a process group, so a child's group is
    never another's; a reaped child's pid may already be another process's, so only unreaped children count by pid."""
    unreaped = {process.pid for process in processes if process.returncode is None} | pids
    groups = {process.pid for process in processes} | pids
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = [pid for pid, (_, pgid, _) in table.items() if pid in unreaped or pgid in groups]
    found: dict[int, str] = {}
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = table[pid][2]
            todo.extend(children.get(pid, ()))
    return found


def _signal_all(known: dict[int, str], table: dict[int, tuple[int, int, str]], signum: int) -> None:
    """Send `signum` to every live known process: through its process group unless that is ours."""
    own_group = os.getpgrp()
    live = [pid for pid, identity in known.items() if pid in table and table[pid][2] == identity]
    for pgid in {table[pid][1] for pid in live} - {own_group}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)
    for pid in live:
        if table[pid][1] == own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)


def child_pids() -> list[int]:
    """The live direct children of this process (whatever started them)."""
    return [pid for pid, (ppid, _, _) in _process_table().items() if ppid == os.getpid()]


def stop_processes(processes: Sequence[subprocess.Popen], grace_s: float = STOP_GRACE_S, *,
                   pids: Iterable[int] = ()) -> None:
    """Stop child processes (best started with `start_new_session=True`) and everything they started, even what left
    their process groups (Prefect workers run each flow run in a session of its own): SIGTERM to every process group
    in their trees, SIGKILL to whatever is left after `grace_s` (at once on a further signal), then reap them.
    `pids` adds processes known only by id. Returns once none of them is left."""
    pids = set(pids)
    hurry = threading.Event()
    # a further SIGINT/SIGTERM/SIGHUP while they stop skips the grace, rather than abandoning the rest half way
    with _handling((signal.SIGINT, *EXIT_SIGNALS), lambda *_: hurry.set()):
        table = _process_table()
        known = _tree(processes, pids, table)
        _signal_all(known, table, signal.SIGTERM)
        deadline, killed_at = time.monotonic() + grace_s, None
        while True:
            for process in processes:
                process.poll()  # reap the children that exited, so they no longer count
            table = _process_table()
            late = {pid: identity for pid, identity in _tree(processes, pids, table).items()
                    if pid not in known}
            _signal_all(late, table, signal.SIGKILL if killed_at else signal.SIGTERM)  # started meanwhile
            known.update(late)
            if not any(table.get(pid, (0, 0, None))[2] == identity for pid, identity in known.items()):
                break
            now = time.monotonic()
            if killed_at is None and (hurry.is_set() or now >= deadline):
                _signal_all(known, table, signal.SIGKILL)
                killed_at = now
            elif killed_at is not None and now - killed_at > 5:
                break  # not even SIGKILL ends it (uninterruptible I/O): nothing more to do
            time.sleep(0.1)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


@dataclass
class PrefectServer:
    process: subprocess.Popen
    api_url: str
    log: Path

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_processes([self.process], grace_s)


def start_prefect_server(settings: Settings, port: int | None = None, timeout: float = 90) -> PrefectServer:
    """Start `prefect server start` on 127.0.0.1 and wait until its API answers /health."""
    port = port or free_port()
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    log = settings.prefect_home / "server.log"
    env = {**os.environ, **prefect_environment(settings)}
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to another server
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
               "--no-ui", "--analytics-off"]
    process = subprocess.Popen(command, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    try:  # until it answers, nobody else holds it: stop it here if waiting fails (a timeout, SIGTERM, Ctrl-C)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {process.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return PrefectServer(process=process, api_url=api_url, log=log)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"prefect server did not become healthy within {timeout:.0f}s; see {log}")
    except BaseException:
        stop_processes([process])
        raise


PROJECT_DIR = Path(__file__).resolve().parents[1]
# The one way the server is started (by `factory serve`, `factory up`, the tests and the benchmarks), from PROJECT_DIR.
SERVER_COMMAND = [sys.executable, "-m", "gunicorn", "-c", "serving/gunicorn_conf.py", "serving.asgi:app"]


@dataclass(frozen=True)
class ServeOptions:
    """How to start the server: a server.yaml (or none) and the settings given as flags (dotted field -> value)."""

    config_file: Path | None = None
    flags: dict[str, Any] = field(default_factory=dict)

    def effective(self) -> EffectiveConfig:
        """What the server will run with (raises ServerConfigError, naming file, line and field)."""
        return load_server_config(self.config_file, flags=self.flags)

    def serving_default(self, name: str) -> "ServeOptions":
        return replace(self, flags={**self.flags, "models.default": name})


def start_server(options: ServeOptions) -> subprocess.Popen:
    """Start the OpenAI-compatible server (gunicorn, uvicorn workers) in a session of its own; stop it with
    `stop_processes`. Its workers load the same config: the file's path and the flags reach them as environment."""
    config = options.effective().config
    env = {**os.environ, **server_environment(options.config_file, options.flags)}
    print(f"serving on http://{config.host}:{config.port}/v1", flush=True)
    return subprocess.Popen(SERVER_COMMAND, cwd=PROJECT_DIR, env=with_openblas(env), start_new_session=True)


def serve(options: ServeOptions) -> int:
    """Run the server in the foreground until it exits or this process is stopped (Ctrl-C, SIGTERM, SIGHUP)."""
    with exit_on_signals():
        processes: list[subprocess.Popen] = []
        try:
            processes.append(start_server(options))
            return processes[0].wait()
        finally:
            stop_processes(processes, pids=child_pids())

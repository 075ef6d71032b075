"""`cxr-al serve`: run the Streamlit app (app.py) for one project and wait until it stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from active.engine.jobs import die_with_parent
from store.errors import CxrAlError
from store.project import open_project

APP_PATH = Path(__file__).resolve().parents[2] / "app.py"
PROJECT_ENV = "CXR_AL_PROJECT"


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a socket can bind there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers, like the server
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on host that is free right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(port: int, host: str) -> list[str]:
    """The `python -m streamlit run app.py` command line: headless, no usage stats, no file watcher."""
    return [sys.executable, "-m", "streamlit", "run", str(APP_PATH),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.address", host, "--server.port", str(port),
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--client.toolbarMode", "minimal"]


def start_server(project_dir: Path | str, *, port: int = 8501, host: str = "127.0.0.1",
                 log: Path | None = None) -> subprocess.Popen:
    """Check the project and the port, then start the app server in a child process and return it."""
    project = open_project(project_dir)  # CxrAlError when it is not a project
    if not 0 < int(port) < 65536:
        raise CxrAlError(f"--port must be between 1 and 65535, got {port}")
    if not port_is_free(host, int(port)):
        raise CxrAlError(f"port {port} on {host} is already in use; choose another with --port")
    env = {**os.environ, PROJECT_ENV: str(project.root.resolve()), "OMP_WAIT_POLICY": "PASSIVE"}
    out = open(log, "ab") if log is not None else None  # noqa: SIM115  (the child keeps it open)
    try:
        return subprocess.Popen(server_command(int(port), host), cwd=str(APP_PATH.parent), env=env,
                                stdout=out, stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent())  # kill -9 of serve takes the app server with it
    finally:
        if out is not None:
            out.close()


def wait_until_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll the server's health endpoint until it answers; CxrAlError when it exits or times out."""
    deadline = time.monotonic() + timeout
    health = url.rstrip("/") + "/_stcore/health"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise CxrAlError(f"the app server stopped with exit code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(health, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise CxrAlError(f"the app server did not answer at {url} within {timeout:.0f} s")


@contextmanager
def forwarding_signals(proc: subprocess.Popen) -> Iterator[None]:
    """Inside the block, SIGTERM, SIGINT and SIGHUP sent to this process are passed on to the app server, whose
    exit then ends the wait; the previous handlers come back afterwards."""
    def forward(signum: int, _frame: Any) -> None:
        proc.stop_requested = True  # read by _wait_for: a stop asked for is not a failed start
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve(project_dir: Path | str, port: int = 8501, host: str = "127.0.0.1", open_browser: bool = False) -> int:
    """Run the labeling app for a project at http://host:port until it stops (Ctrl-C, SIGTERM: passed on to the
    server, and this returns only once it has exited); returns its exit code."""
    proc = start_server(project_dir, port=port, host=host)
    with forwarding_signals(proc):
        return _wait_for(proc, project_dir, port, host, open_browser)


def _wait_for(proc: subprocess.Popen, project_dir: Path | str, port: int, host: str, open_browser: bool) -> int:
    """Wait until the server answers, say where, then until it exits; it never outlives this call."""
    url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0', '::') else host}:{port}"
    try:
        try:
            wait_until_ready(url, proc)
        except CxrAlError:
            if getattr(proc, "stop_requested", False):
                return 130
            raise
        print(f"CXR-AL is serving {Path(project_dir)} at {url} (Ctrl-C stops it)", file=sys.stderr)
        if open_browser:
            webbrowser.open(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

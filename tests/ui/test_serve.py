"""`cxr-al demo` and `cxr-al serve` as a user runs them: the demo ends in a running app that answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from active.delivery.serve import free_port
from active.views.accounts import authenticate
from store.project import open_project

REPO = Path(__file__).resolve().parents[2]


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"nothing answered at {url}")


def test_demo_prepares_a_project_with_an_account_then_serves_it(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "active.delivery.cli", "demo", "--dir", str(tmp_path / "demo"), "--n", "24",
                             "--epochs", "1", "--port", str(port)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc, timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    match = re.search(r"sign in as '(\w+)' with password '([^']+)' \((\w+)\)", out)
    assert match, out
    project = open_project(tmp_path / "demo" / "project")
    assert authenticate(project, match[1], match[2], sleep=lambda _: None) == {"name": match[1], "role": match[3]}
    assert project.db.summary()["images"]["pool"] > 0 and not project.db.open_queue().empty
    assert {"pretrain", "embed"} <= set(project.db.rounds()["kind"])


def test_serve_refuses_a_bad_project_and_a_taken_port(tmp_path, ui_project):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "active.delivery.cli", "serve", *args], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})

    missing = serve(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no such project" in missing.stderr and "Traceback" not in missing.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = serve(str(ui_project.root), "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "already in use" in busy.stderr


def _streamlit_processes(port: int) -> list[int]:
    """Pids of live processes whose command line runs Streamlit on this port."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if b"streamlit" in b" ".join(cmd) and str(port).encode() in cmd and "zombie" not in state:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_serve_takes_the_app_server_down_with_it(ui_project, sig) -> None:
    """SIGTERM to `cxr-al serve` is passed on and serve exits only after Streamlit has; after kill -9 of serve the
    server dies too (parent-death signal). Either way no Streamlit process is left serving."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "active.delivery.cli", "serve", str(ui_project.root), "--port",
                             str(port)], env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc)
        assert _streamlit_processes(port)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        if sig == signal.SIGTERM:
            assert not _streamlit_processes(port)  # gone before serve itself returned
        deadline = time.monotonic() + 20
        while _streamlit_processes(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _streamlit_processes(port)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _streamlit_processes(port):
            os.kill(pid, signal.SIGKILL)

"""`cxr-al demo` and `cxr-al serve` as a user runs them: the demo ends in a running app that answers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from active.delivery.cli import build_parser
from active.delivery.serve import check_exposure, free_port, is_loopback
from active.views.accounts import authenticate
from store.project import open_project

REPO = Path(__file__).resolve().parents[2]


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    context = ssl._create_unverified_context() if url.startswith("https:") else None  # a self-signed test certificate
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2, context=context) as reply:
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


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "active.delivery.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a self-signed certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-days",
                    "1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_serve_with_a_certificate_answers_over_https(tmp_path, ui_project) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "active.delivery.cli", "serve", str(ui_project.root), "--port",
                             str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_health(f"https://127.0.0.1:{port}", proc)
        with pytest.raises(OSError):  # plain HTTP is not answered on the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5).read()
        seen = []  # serve's own probe (https, self-signed) gets through too: it says where it serves
        for line in proc.stdout:
            seen.append(line)
            if "CXR-AL is serving" in line:
                break
        assert f"at https://localhost:{port}" in seen[-1], "".join(seen)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _streamlit_processes(port):
            os.kill(pid, signal.SIGKILL)


def test_serve_refuses_unreadable_tls_files_before_starting(tmp_path, ui_project) -> None:
    cert, key = tmp_path / "missing-cert.pem", tmp_path / "missing-key.pem"
    missing = run_serve(str(ui_project.root), "--tls-cert", str(cert), "--tls-key", str(key))
    assert missing.returncode == 2 and "--tls-cert" in missing.stderr and "cannot read" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    cert.write_text("x")
    half = run_serve(str(ui_project.root), "--tls-cert", str(cert))
    assert half.returncode == 2 and "both --tls-cert FILE and --tls-key FILE" in half.stderr


def test_serve_refuses_plain_http_on_the_network(ui_project) -> None:
    """Fails before binding anything: the reason, exit 2, no traceback."""
    exposed = run_serve(str(ui_project.root), "--host", "0.0.0.0", "--port", str(free_port()))
    assert exposed.returncode == 2 and "Traceback" not in exposed.stderr
    assert "refusing to serve plain HTTP on 0.0.0.0" in exposed.stderr and "clear text" in exposed.stderr
    assert "--insecure-http" in exposed.stderr and len(exposed.stderr.strip().splitlines()) == 1


def test_demo_refuses_plain_http_on_the_network_before_preparing(tmp_path) -> None:
    demo = subprocess.run([sys.executable, "-m", "active.delivery.cli", "demo", "--dir", str(tmp_path / "demo"),
                           "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert demo.returncode == 2 and "refusing to serve plain HTTP" in demo.stderr
    assert not (tmp_path / "demo").exists()  # nothing prepared


def test_insecure_http_is_accepted_with_a_warning(capsys) -> None:
    check_exposure("0.0.0.0", None, insecure_http=True)
    assert "warning: serving plain HTTP on 0.0.0.0" in capsys.readouterr().err
    check_exposure("192.168.1.5", (Path("c.pem"), Path("k.pem")))  # TLS: no question asked
    check_exposure("127.0.0.2", None)  # loopback: nothing to say
    assert capsys.readouterr().err == ""
    for command in ("serve", "demo"):
        args = build_parser().parse_args([command, *(["p"] if command == "serve" else []), "--host", "0.0.0.0",
                                          "--insecure-http", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
        assert args.insecure_http and args.tls_cert == Path("c.pem") and args.tls_key == Path("k.pem")


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True),
                                                ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                                ("10.0.0.4", False), ("example.org", False)])
def test_loopback_addresses(host, loopback) -> None:
    assert is_loopback(host) is loopback

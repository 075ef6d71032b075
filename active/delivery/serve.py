"""`cxr-al serve`: run the Streamlit app (app.py) for one project and wait until it stops."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from active.engine.jobs import die_with_parent
from store.config import oidc_sign_in
from store.errors import CxrAlError
from store.project import Project, open_project

APP_PATH = Path(__file__).resolve().parents[2] / "app.py"
SERVER_PATH = APP_PATH.parent / "ui" / "server.py"  # app.py as an ASGI app, with the session cookie's route
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


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and localhost."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def private_umask() -> int:
    """This process's umask with all group and other bits added: what the app server creates is the user's only."""
    current = os.umask(0o077)
    os.umask(current)
    return current | 0o077


def tls_files(tls_cert: Path | str | None, tls_key: Path | str | None) -> tuple[Path, Path] | None:
    """The certificate and key paths, checked readable; None without TLS; CxrAlError when only one is given or
    either cannot be read."""
    if tls_cert is None and tls_key is None:
        return None
    if tls_cert is None or tls_key is None:
        raise CxrAlError("TLS needs both --tls-cert FILE and --tls-key FILE")
    paths = (Path(tls_cert).expanduser(), Path(tls_key).expanduser())
    for option, path in zip(("--tls-cert", "--tls-key"), paths, strict=True):
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise CxrAlError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from exc
    return paths[0].resolve(), paths[1].resolve()


def check_exposure(host: str, tls: tuple[Path, Path] | None, insecure_http: bool = False, *, warn: bool = True) -> None:
    """Refuse plain HTTP on an address other machines can reach unless the user insists (then warn on stderr):
    session ids and passwords would cross the network in clear text."""
    if tls is not None or is_loopback(host):
        return
    if not insecure_http:
        raise CxrAlError(f"refusing to serve plain HTTP on {host}: session ids and passwords would cross the network "
                         "in clear text; give --tls-cert FILE --tls-key FILE, or --insecure-http to accept that")
    if warn:
        print(f"cxr-al: warning: serving plain HTTP on {host} (--insecure-http): session ids and passwords cross the "
              "network in clear text", file=sys.stderr)


def secrets_path(project_root: Path | str) -> Path:
    """The project's Streamlit secrets file: the only one its app server reads (the `[auth]` settings of sign-in
    through OpenID Connect: client id and secret, cookie secret, redirect URI)."""
    return Path(project_root).resolve() / ".streamlit" / "secrets.toml"


def check_oidc(project: Project) -> None:
    """When project.yaml turns on sign-in through OpenID Connect: Authlib is installed and the project's secrets file
    is private to its owner and holds what Streamlit's st.login needs; CxrAlError saying what to fix otherwise."""
    oidc = oidc_sign_in(project.config)
    if oidc is None:
        return
    if importlib.util.find_spec("authlib") is None:
        raise CxrAlError("access.oidc needs Authlib: pip install 'cxr-al[oidc]' (or set access.oidc.enabled: false)")
    path, name = secrets_path(project.root), oidc["provider"]
    needs = (f"[auth] with redirect_uri = \"https://HOST:PORT/oauth2callback\" and cookie_secret, and [auth.{name}] "
             "with client_id, client_secret and server_metadata_url")
    try:
        mode = path.stat().st_mode
        with open(path, "rb") as handle:
            secrets = tomllib.load(handle)
    except FileNotFoundError:
        raise CxrAlError(f"access.oidc is on but {path} is missing: write {needs} there (chmod 600)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CxrAlError(f"{path}: cannot read it ({exc})") from None
    if mode & 0o077:
        raise CxrAlError(f"{path} holds the client secret but others may read it: chmod 600 {path}")
    auth = secrets.get("auth")
    provider = auth.get(name) if isinstance(auth, dict) else None
    missing = [f"auth.{key}" for key in ("redirect_uri", "cookie_secret") if not (auth or {}).get(key)]
    missing += [f"auth.{name}.{key}" for key in ("client_id", "client_secret", "server_metadata_url")
                if not isinstance(provider, dict) or not provider.get(key)]
    if missing:
        raise CxrAlError(f"{path}: missing {', '.join(missing)} (it needs {needs})")
    if not str(auth["redirect_uri"]).rstrip("/").endswith("/oauth2callback"):
        raise CxrAlError(f"{path}: auth.redirect_uri must be the app's address followed by /oauth2callback "
                         f"(got {auth['redirect_uri']!r})")
    if len(str(auth["cookie_secret"])) < 32:
        raise CxrAlError(f"{path}: auth.cookie_secret must be a long random secret (at least 32 characters, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))')")


def server_command(port: int, host: str, tls: tuple[Path, Path] | None = None,
                   secrets: Path | None = None) -> list[str]:
    """The `python -m streamlit run ui/server.py` command line (app.py as st.App, ui/handoff.py): headless, no usage stats, no file watcher; HTTPS when
    given a certificate and key; secrets read from that file only (never ~/.streamlit or the working folder).
    Streamlit's full garbage collection after every script run is off: with torch and pandas loaded it cost a
    third of the server's CPU per key press (py-spy, bench/bench_annotators.py); Python's own generational
    collector still runs."""
    command = [sys.executable, "-m", "streamlit", "run", str(SERVER_PATH),
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.address", host, "--server.port", str(port),
               "--server.fileWatcherType", "none", "--server.runOnSave", "false",
               "--client.toolbarMode", "minimal", "--runner.postScriptGC", "false"]
    if tls is not None:
        command += ["--server.sslCertFile", str(tls[0]), "--server.sslKeyFile", str(tls[1])]
    if secrets is not None:
        command += ["--secrets.files", str(secrets)]
    return command


def start_server(project_dir: Path | str, *, port: int = 8501, host: str = "127.0.0.1",
                 log: Path | None = None, tls: tuple[Path, Path] | None = None,
                 insecure_http: bool = False) -> subprocess.Popen:
    """Check the project, the exposure and the port, then start the app server in a child process and return it."""
    project = open_project(project_dir)  # CxrAlError when it is not a project
    check_exposure(host, tls, insecure_http)
    check_oidc(project)
    if not 0 < int(port) < 65536:
        raise CxrAlError(f"--port must be between 1 and 65535, got {port}")
    if not port_is_free(host, int(port)):
        raise CxrAlError(f"port {port} on {host} is already in use; choose another with --port")
    env = {**os.environ, PROJECT_ENV: str(project.root.resolve()), "OMP_WAIT_POLICY": "PASSIVE"}
    out = open(log, "ab") if log is not None else None  # noqa: SIM115  (the child keeps it open)
    try:
        return subprocess.Popen(server_command(int(port), host, tls, secrets_path(project.root)),
                                cwd=str(APP_PATH.parent), env=env,
                                stdout=out, stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent(),  # kill -9 of serve takes the app server with it
                                umask=private_umask())  # its exports and artifacts are private to the user
    finally:
        if out is not None:
            out.close()


def wait_until_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll the server's health endpoint until it answers; CxrAlError when it exits or times out."""
    deadline = time.monotonic() + timeout
    health = url.rstrip("/") + "/_stcore/health"
    # the local probe only asks "is it up?": a self-signed certificate is fine here, browsers still verify
    context = ssl._create_unverified_context() if health.startswith("https:") else None  # noqa: S323
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise CxrAlError(f"the app server stopped with exit code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(health, timeout=2, context=context) as reply:
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


def serve(project_dir: Path | str, port: int = 8501, host: str = "127.0.0.1", open_browser: bool = False, *,
          tls: tuple[Path, Path] | None = None, insecure_http: bool = False) -> int:
    """Run the labeling app for a project at http(s)://host:port until it stops (Ctrl-C, SIGTERM: passed on to the
    server, and this returns only once it has exited); returns its exit code."""
    proc = start_server(project_dir, port=port, host=host, tls=tls, insecure_http=insecure_http)
    with forwarding_signals(proc):
        return _wait_for(proc, project_dir, port, host, open_browser, "https" if tls else "http")


def _wait_for(proc: subprocess.Popen, project_dir: Path | str, port: int, host: str, open_browser: bool,
              scheme: str = "http") -> int:
    """Wait until the server answers, say where, then until it exits; it never outlives this call."""
    url = f"{scheme}://{'localhost' if host in ('127.0.0.1', '0.0.0.0', '::') else host}:{port}"
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

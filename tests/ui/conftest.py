"""UI fixtures: a labeling project with accounts and a queue, a real app server, headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-12", "carol": "carol-secret-1", "dave": "dave-secret-1",
             "lena": "lena-secret-1", "root": "root-secret-1"}
ROLES = {"alice": "annotator", "bob": "annotator", "carol": "annotator", "dave": "annotator", "lena": "lead",
         "root": "admin"}
QUEUED = 16  # unassigned suggestions; the rest of the pool is served in id order


def make_labeling_project(root: Path, *, n: int = 48, size: int = 96, queued: int = QUEUED):
    """A phantom project (20% test split, ground truth hidden) with the accounts above and a queue."""
    from active.views.accounts import add_user
    from store.ingest import ingest_folder
    from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
    from store.project import init_project

    data = write_phantom_dataset(root / "phantoms", n=n, seed=5, size=size)
    project = init_project(root / "project", list(PHANTOM_CLASSES), image_size=64, name="ui-test")
    project.config["round_policy"]["train_every"] = 0  # no training children while the UI is tested
    project.save_config()
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", labels_as="oracle",
                  test_fraction=0.2, seed=0)
    for name, role in ROLES.items():
        add_user(project, name, role, PASSWORDS[name])
    pool = project.db.images("pool")["id"].tolist()
    project.db.add_to_queue([{"image_id": int(i), "annotator": None, "strategy": "hybrid", "score": 0.9 - k / 100,
                              "model_round": None, "rank": k} for k, i in enumerate(pool[:queued])])
    return project


@pytest.fixture(autouse=True)
def apptest_cookie(monkeypatch):
    """AppTests have no browser: ui.session takes the session cookie from apptest_session.TOKEN instead."""
    import apptest_session

    import ui.session

    monkeypatch.setattr(ui.session, "browser_token", lambda _served: apptest_session.TOKEN["token"])
    yield
    apptest_session.TOKEN["token"] = None


@pytest.fixture
def passwords() -> dict[str, str]:
    """The password of each test account."""
    return dict(PASSWORDS)


@pytest.fixture
def ui_project(tmp_path: Path):
    """A fresh labeling project for one AppTest."""
    return make_labeling_project(tmp_path)


# ----------------------------------------------------------------------------- browser tests
@pytest.fixture(scope="session")
def browser_project(tmp_path_factory):
    """The labeling project the live app server serves (shared by all browser tests)."""
    return make_labeling_project(tmp_path_factory.mktemp("browser"))


@contextmanager
def serving(root: Path, log_name: str = "streamlit.log") -> Iterator[str]:
    """The app served the way `cxr-al serve` does, for the project at root, on a free local port: its URL."""
    from active.delivery.serve import free_port, start_server, wait_until_ready

    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / log_name  # browser_steps.explain_failure shows its tail when a step fails
    log.unlink(missing_ok=True)
    proc = start_server(root, port=port, host="127.0.0.1", log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, timeout=90)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except Exception:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def app_server():
    """serving(root, log_name): for test modules that serve a project of their own."""
    return serving


@pytest.fixture(scope="session")
def labeling_project():
    """make_labeling_project(root, n=..., queued=...): for test modules that build a project of their own."""
    return make_labeling_project


@pytest.fixture(scope="session")
def app_url(browser_project, tmp_path_factory) -> Iterator[str]:
    """Start the app the way `cxr-al serve` does on a free local port; stop it after the session."""
    with serving(browser_project.root) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (skipped without it, except in CI)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser):
    """Pages in fresh browser contexts (a context is one independent browser session)."""
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1400, "height": 950}, accept_downloads=True)
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        from browser_steps import record_events

        record_events(page)
        return page

    yield make
    for context in contexts:
        context.close()

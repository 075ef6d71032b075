"""Access on the real app in headless Chromium: sessions revoked from the CLI, idle expiry, lockout and unlock,
parallel guesses throttled together, a replayed Streamlit session id without the browser's cookie, and a claimed
image that returns to the queue when its session ends.

Its own app server and project (module scope), so lockouts and setting changes never reach test_browser.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from browser_steps import explain_failure, shown_image_id, sign_in, sign_out

pytestmark = pytest.mark.browser

LOCKOUT = 3  # failed sign-ins that lock a name in this project
ACCOUNTS = {"lead1": "lead", "lead2": "lead", "lead3": "lead", "idler": "annotator", "locked1": "annotator",
            "guessed": "annotator", "ann1": "annotator", "ann2": "annotator", "ann3": "annotator"}


def password(name: str) -> str:
    return f"{name}-secret-1"


@pytest.fixture(scope="module")
def access_project(tmp_path_factory, labeling_project):
    from active.views.accounts import add_user

    project = labeling_project(tmp_path_factory.mktemp("access"), n=24, queued=8)
    for name, role in ACCOUNTS.items():
        add_user(project, name, role, password(name))
    project.config["access"] = {"lockout_failures": LOCKOUT, "lockout_s": 0}
    project.save_config()
    return project


@pytest.fixture(scope="module")
def access_url(access_project, app_server):
    with app_server(access_project.root, "streamlit-access.log") as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_address(access_project):
    """Every sign-in of these tests comes from this machine: its address count starts afresh for each test."""
    yield
    access_project.db.clear_signin_failures("address:local")


def cxr(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "active.delivery.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def signed_in(page, url: str, name: str) -> None:
    sign_in(page, url, name, password(name))
    try:
        page.get_by_text(f"Signed in as {name} (").wait_for()
    except Exception:
        raise explain_failure(page, f"{name} was not signed in") from None


def set_access(project, **settings) -> None:
    path = project.root / "project.yaml"
    config = yaml.safe_load(path.read_text())
    config["access"] = {**config.get("access", {}), **settings}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def lead_on_export(new_page, url: str, name: str):
    """A page where lead `name` signed in and opened Export."""
    page = new_page()
    signed_in(page, url, name)
    page.get_by_role("link", name="Export").click()
    page.get_by_text("Export labels").wait_for()
    return page


def test_a_lead_demoted_from_the_cli_loses_export_on_the_next_click(access_url, access_project, new_page):
    page = lead_on_export(new_page, access_url, "lead1")
    cxr("user", "add", str(access_project.root), "lead1", "--role", "annotator", "--password-stdin",
        stdin=password("lead1") + "\n")
    page.get_by_role("link", name="Label").click()  # the next click
    page.get_by_text("Signed in as lead1 (annotator)").wait_for()
    assert page.get_by_role("link", name="Export").count() == 0
    page.reload()  # the page kept in the tab is refused too
    page.get_by_text("Signed in as lead1 (annotator)").wait_for()
    page.goto(access_url + "/export")
    page.get_by_text("Your account may not open this page.").wait_for()
    assert page.locator(".st-key-export-downloads").count() == 0


def test_a_password_change_signs_the_old_session_out(access_url, access_project, new_page):
    page = lead_on_export(new_page, access_url, "lead2")
    cxr("user", "add", str(access_project.root), "lead2", "--role", "lead", "--password-stdin",
        stdin="a-brand-new-pass-2\n")
    page.get_by_role("link", name="Label").click()
    page.get_by_text("Your password was changed").wait_for()
    page.get_by_label("Username", exact=True).wait_for()
    deadline = time.monotonic() + 30  # the server removes the dead HttpOnly cookie (ui/handoff.py) ...
    while any(c["name"].startswith("cxr_al_session_") for c in page.context.cookies()):
        assert time.monotonic() < deadline, "the ended session's cookie was not removed"
        page.wait_for_timeout(200)
    page.get_by_text("Your password was changed").wait_for()  # ... and the page still says why
    page.reload()  # nothing opens the old session any more
    page.get_by_label("Username", exact=True).wait_for()
    assert page.get_by_text("Signed in as").count() == 0


def test_an_idle_session_expires(access_url, access_project, new_page):
    set_access(access_project, session_idle_s=4)
    try:
        page = new_page()
        signed_in(page, access_url, "idler")
        shown_image_id(page)
        page.wait_for_timeout(6_000)  # no clicks
        page.get_by_role("link", name="Review").click()
        page.get_by_text("timed out").wait_for()
        page.get_by_label("Username", exact=True).wait_for()
    finally:
        set_access(access_project, session_idle_s=1800)


def test_lockout_after_n_failures_and_admin_unlock(access_url, access_project, new_page):
    page = new_page()
    for _ in range(LOCKOUT):
        sign_in(page, access_url, "locked1", "not-the-password")
        page.get_by_text("Wrong username or password.").wait_for()
    sign_in(page, access_url, "locked1", password("locked1"))  # the right password, too late
    page.get_by_text("it is locked until an admin unlocks it").wait_for()
    assert page.get_by_text("Signed in as").count() == 0
    done = cxr("user", "unlock", str(access_project.root), "locked1")
    assert f"{LOCKOUT} failed sign-ins forgotten" in done.stdout
    signed_in(page, access_url, "locked1")


def test_parallel_wrong_guesses_are_throttled_together(access_url, access_project, new_page):
    """Four browsers guess one name at the same moment, twice: the guesses are checked one after the other, each
    after the previous one's back-off, and the name locks after LOCKOUT of them; the rest are refused unchecked."""
    pages = [new_page() for _ in range(4)]
    for _ in range(2):
        for page in pages:
            page.goto(access_url)
            page.get_by_label("Username", exact=True).fill("guessed")
            page.get_by_label("Password", exact=True).fill("guess-guess-1")
        for page in pages:  # all submitted before any answer
            page.get_by_role("button", name="Sign in").click()
        for page in pages:
            page.get_by_text("Wrong username or password.").or_(page.get_by_text("Not signed in:")).first.wait_for()
    failed = access_project.db.events("signin_failed")
    failed = failed[failed["actor"] == "guessed"].sort_values("logged_at")
    assert len(failed) == LOCKOUT  # not 8: the others were refused without a password check
    spread = (failed["logged_at"].iloc[-1] - failed["logged_at"].iloc[0]).total_seconds()
    assert spread >= 0.5 + 1.0 - 0.1, spread  # the back-offs after failures 1 and 2 were waited in turn


def test_a_replayed_session_id_without_the_cookie_gets_the_sign_in_page(access_url, new_page):
    """The attack of the issue: a raw websocket client presents only a signed-in lead's Streamlit session id (as
    seen in the traffic). It gets the sign-in form. The same client with the lead's cookie gets Export, so the
    harness does reach the page."""
    seen = Traffic()
    page = lead_on_export(lambda: seen.watch(new_page()), access_url, "lead3")
    assert seen.session_ids, "no session id seen in the websocket traffic"
    cookie = next(c for c in page.context.cookies() if c["name"].startswith("cxr_al_session_"))
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["httpOnly"]  # set by the server's hand-over route: no script on the page can read it
    assert cookie["name"] not in page.evaluate("document.cookie")

    replayed = _raw_run(access_url, seen.session_ids[-1], page_name="export")
    assert "Username" in replayed and "Export labels" not in replayed and "lead3" not in replayed
    with_cookie = _raw_run(access_url, seen.session_ids[-1], page_name="export",
                           cookie=f"{cookie['name']}={cookie['value']}")
    assert "Export labels" in with_cookie


def test_a_replayed_session_id_cannot_rerun_the_label_pages_fragments(access_url, new_page):
    """The same attack on the label page's fragments (their reruns skip app.py and the page's check): the raw
    client must get neither the radiograph nor its image id."""
    seen = Traffic()
    page = seen.watch(new_page())
    signed_in(page, access_url, "ann3")
    shown_image_id(page)
    assert seen.fragment_ids, "the label page showed no fragment"
    for fragment_id in sorted(seen.fragment_ids):
        replayed = _raw_run(access_url, seen.session_ids[-1], fragment_id=fragment_id)
        assert "data:image/png" not in replayed and "Image " not in replayed, fragment_id


def test_an_expired_claim_returns_to_the_queue_and_another_annotator_gets_it(access_url, access_project,
                                                                            new_page):
    set_access(access_project, session_idle_s=4)
    try:
        first = new_page()
        signed_in(first, access_url, "ann1")
        claimed = shown_image_id(first)
        assert access_project.db.open_queue().set_index("image_id").loc[claimed, "annotator"] == "ann1"
        first.wait_for_timeout(5_000)  # ann1 walks away from the image on her screen (its polling is no activity)
    finally:
        set_access(access_project, session_idle_s=1800)
    second = new_page()
    signed_in(second, access_url, "ann2")
    assert shown_image_id(second) == claimed
    sign_out(second)  # releasing on sign-out, too
    assert pd.isna(access_project.db.open_queue().set_index("image_id").loc[claimed, "annotator"])


class Traffic:
    """What a page's websocket traffic tells an eavesdropper: Streamlit session ids and fragment ids."""

    def __init__(self) -> None:
        self.session_ids: list[str] = []
        self.fragment_ids: set[str] = set()

    def watch(self, page):
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))
        return page

    def _frame(self, frame) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if not isinstance(frame, bytes | bytearray):
            return
        msg = ForwardMsg()
        try:
            msg.ParseFromString(bytes(frame))
        except Exception:  # noqa: BLE001 - not every frame is a ForwardMsg we can read
            return
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.session_ids.append(msg.new_session.initialize.session_id)
        elif kind == "delta" and msg.delta.fragment_id:
            self.fragment_ids.add(msg.delta.fragment_id)


def _raw_run(url: str, session_id: str, *, page_name: str = "", fragment_id: str = "", cookie: str | None = None,
             timeout: float = 30) -> str:
    """What a bare websocket client gets when it reconnects to a Streamlit session id and asks for a page (or a
    fragment) run: the text of every message of that run until it finishes."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    host = url.split("//", 1)[1]
    headers = {"Origin": url, **({"Cookie": cookie} if cookie else {})}
    back = BackMsg()
    back.rerun_script.page_name = page_name
    back.rerun_script.fragment_id = fragment_id
    texts: list[str] = []
    started = bool(fragment_id)  # a fragment run sends no new_session
    deadline = time.monotonic() + timeout
    with connect(f"ws://{host}/_stcore/stream", subprotocols=["streamlit", "xsrf", session_id],
                 additional_headers=headers, max_size=None) as ws:
        ws.send(back.SerializeToString())
        while time.monotonic() < deadline:
            try:
                data = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            msg = ForwardMsg()
            msg.ParseFromString(data)
            kind = msg.WhichOneof("type")
            if kind == "new_session":  # the run asked for begins (what came before ends an earlier run)
                texts, started = [], True
            texts.append(str(msg))
            if kind == "script_finished" and started and len(texts) > 1:
                break
    return "\n".join(texts)

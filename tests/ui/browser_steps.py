"""Steps a browser test takes on the live app: sign in, press keys, wait for the next image, screenshots."""

from __future__ import annotations

import re
import time
import weakref
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"

IMAGE_ID = re.compile(r"Image (\d+) ·")
_EVENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # page -> what its browser saw (for failures)


def _note(page, text: str) -> None:
    """Add to what page's browser saw, when record_events watches it (the last 60 events are kept)."""
    events = _EVENTS.get(page)
    if events is not None:
        events.append(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {text}")
        del events[:-60]


def record_events(page) -> None:
    """Keep what a failure report needs from the browser side: console messages, navigations, key presses and the
    websocket's life (a reconnect disables Streamlit's widgets and their keyboard shortcuts for a moment)."""
    _EVENTS[page] = []

    def note(text: str) -> None:
        _note(page, text)

    page.on("console", lambda m: note(f"console {m.type}: {m.text[:300]}"))
    page.on("framenavigated", lambda f: f.parent_frame is None and note(f"navigated to {f.url}"))
    page.on("websocket", lambda ws: (note(f"websocket open {ws.url}"),
                                     ws.on("close", lambda _: note(f"websocket closed {ws.url}"))))
    page.on("pageerror", lambda e: note(f"page error: {e}"))


def sign_in(page, url: str, name: str, password: str) -> None:
    """Open the app and submit the sign-in form; a browser already signed in as `name` (its session cookie
    survives page loads) just opens the address."""
    page.goto(url)
    username = page.get_by_label("Username", exact=True)
    signed_in = page.get_by_text(f"Signed in as {name} (")
    username.or_(signed_in).first.wait_for()
    if signed_in.count() and not username.count():
        return
    username.fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def sign_out(page) -> None:
    """Press Sign out in the sidebar and wait for the sign-in form."""
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Username", exact=True).wait_for()


def explain_failure(page, what: str) -> AssertionError:
    """An assertion error with what the page shows and the end of the server log (CI has no screenshots)."""
    try:
        text = page.locator("body").inner_text(timeout=5_000)
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure
        text = f"(page text unavailable: {exc})"
    logs = sorted(ARTIFACTS.glob("streamlit*.log"))  # one per app server of the test session
    tail = "\n".join(f"[{log.name}]\n" + log.read_text(errors="replace")[-4000:] for log in logs) or "(no server log)"
    try:
        screenshot(page, f"failure-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:40]}")
    except Exception:  # noqa: BLE001
        pass
    seen = "\n".join(_EVENTS.get(page, [])) or "(not recorded)"
    return AssertionError(f"{what}\n--- page text ---\n{text[-3000:]}\n--- server log tail ---\n{tail}"
                          f"\n--- browser events ---\n{seen}")


def shown_image_id(page) -> int:
    """The id of the image the label page shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator(".st-key-label-image img").first.wait_for()
    except PlaywrightTimeout:
        raise explain_failure(page, "the label page showed no image") from None
    match = IMAGE_ID.search(page.locator(".st-key-label-info").inner_text())
    assert match, "the label page shows no image id"
    return int(match.group(1))


# Resolves when the label page shows an image other than `old` with its pixels loaded. Event-driven (a
# MutationObserver and the image's load event) rather than Playwright's wait_for_function, which re-evaluates its
# predicate on every animation frame: with eight browsers on two cores that polling alone (innerText forces a
# layout each frame) was a large part of the machine's load in the annotator benchmark.
_OTHER_IMAGE_JS = """([old, timeoutMs]) => new Promise((resolve, reject) => {
    let done = false;
    const finish = (fn, value) => { if (!done) { done = true; observer.disconnect(); clearTimeout(timer); fn(value); } };
    const check = () => {
        const info = document.querySelector('.st-key-label-info');
        const img = document.querySelector('.st-key-label-image img');
        const m = info && info.textContent.match(/Image (\\d+) ·/);
        if (!m || Number(m[1]) === old || !img) return;
        if (img.complete && img.naturalWidth > 0) finish(resolve, Number(m[1]));
        else img.addEventListener('load', check, {once: true});
    };
    const observer = new MutationObserver(check);
    const timer = setTimeout(() => finish(reject, new Error('timeout')), timeoutMs);
    observer.observe(document.body, {childList: true, subtree: true, characterData: true, attributes: true});
    check();
})"""


def wait_for_other_image(page, old_id: int, timeout_ms: int = 120_000) -> int:
    """Wait until the label page shows an image other than old_id (and its pixels loaded); return its id."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        page.evaluate(_OTHER_IMAGE_JS, [old_id, timeout_ms])
    except PlaywrightError:
        raise explain_failure(page, f"the label page still shows image {old_id}") from None
    return shown_image_id(page)


def press(page, key: str) -> None:
    """A key press with nothing focused (as an annotator's hands on the keyboard)."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    _note(page, f"press {key}")
    page.keyboard.press(key)


def screenshot(page, name: str, height: int = 1800) -> None:
    """Save test-artifacts/ui/NAME.png. Streamlit scrolls inside its own container, so a full-page shot
    is only the viewport: the viewport is made tall for the shot, then restored."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": max(height, size["height"])})
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(size)

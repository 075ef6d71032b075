"""The label page in headless Chromium: the radiograph arrives losslessly inside the page (a PNG data: URI over
the session's websocket), pixel for pixel what the viewer rendered, and never through Streamlit's /media/ URLs."""

from __future__ import annotations

import base64
import io
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from browser_steps import ARTIFACTS, explain_failure, screenshot, shown_image_id, sign_in
from PIL import Image

from ui.gate import REFUSED

pytestmark = pytest.mark.browser

# The shown <img> drawn onto a canvas at its natural size: the pixels the browser decoded (red channel).
CANVAS_PIXELS = """img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const red = [];
    for (let i = 0; i < rgba.length; i += 4) red.push(rgba[i]);
    return {width: canvas.width, height: canvas.height, red: red};
}"""


def _expected_view(project, image_id: int, preset: str = "File default") -> np.ndarray:
    """What the label page should show for an image, unzoomed, with a window preset."""
    from store.images import read_native
    from ui import viewer

    path = Path(project.db.image(image_id)["path"])
    values, info = read_native(path if path.is_absolute() else project.root / path)
    center, width = viewer.preset_window(info, preset)
    return viewer.render_native(values, info, center=center, width=width)


def _shown_png(page, old_src: str | None = None) -> tuple[str, np.ndarray]:
    """(src, pixels) of the label page's radiograph once it is a loaded data: URI other than old_src."""
    page.wait_for_function(
        """old => {
        const img = document.querySelector('.st-key-label-image img');
        return img && img.src !== old && img.src.startsWith('data:image/png') && img.complete && img.naturalWidth;
    }""", arg=old_src)
    src = page.locator(".st-key-label-image img").first.get_attribute("src")
    return src, np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def _status(url: str) -> tuple[int, str]:
    """(HTTP status, content type) of a GET without any session or cookie."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", "")


def test_label_page_shows_the_rendered_pixels_without_media_urls(app_url, new_page, browser_project,
                                                                  passwords) -> None:
    from streamlit.runtime.memory_media_file_storage import _calculate_file_id

    from ui import viewer

    page = new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, app_url, "carol", passwords["carol"])
    image_id = shown_image_id(page)
    screenshot(page, "label-native-window")
    img = page.locator(".st-key-label-image img").first
    src = img.get_attribute("src") or ""
    assert src.startswith("data:image/png;base64,"), f"the radiograph is not inline: {src[:80]!r}"
    src, shown = _shown_png(page)
    expected = _expected_view(browser_project, image_id)
    assert np.array_equal(shown, expected)  # the PNG the viewer made
    drawn = page.evaluate(CANVAS_PIXELS, img.element_handle())
    decoded = np.array(drawn["red"], dtype=np.uint8).reshape(drawn["height"], drawn["width"])
    assert np.array_equal(decoded, expected)  # and what Chromium decoded from it, pixel for pixel

    page.locator(".st-key-view_preset").click()  # a preset redraws the image through the same path
    page.get_by_role("option", name="Lung").click()
    _, lung = _shown_png(page, src)
    assert np.array_equal(lung, _expected_view(browser_project, image_id, "Lung"))
    assert not np.array_equal(lung, expected)

    page.wait_for_timeout(1000)  # late requests (fragments, prefetch) too
    media = [u for u in requested if urlparse(u).path.startswith("/media/")]  # not /static/media/ (fonts)
    if media:
        raise explain_failure(page, f"the label page fetched media URLs: {media}")
    html = page.content()
    assert not re.search(r'(src|href)="[^"]*?(?<!/static)/media/', html)
    # had st.image served this PNG, it would sit at /media/<its id>.png for anyone with the address; it does not
    for data in (base64.b64decode(src.split(",", 1)[1]), viewer.png(expected)):
        name = f"{_calculate_file_id(data, 'image/png')}.png"
        status, kind = _status(f"{app_url}/media/{name}")
        assert status == 404 and not kind.startswith("image/"), (name, status, kind)


def _clear_cache_as_a_stranger(app_url: str) -> None:
    """Open Streamlit's websocket with no cookie and no session, send clear_cache, then a heartbeat: its ack
    comes after the clear was handled (one session's messages are handled in order)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    with connect(app_url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"],
                 open_timeout=10) as ws:
        ws.send(BackMsg(clear_cache=True).SerializeToString())
        ws.send(BackMsg(app_heartbeat=True).SerializeToString())
        for _ in range(50):
            reply = ForwardMsg()
            reply.ParseFromString(ws.recv(timeout=10))
            if reply.WhichOneof("type") == "heartbeat_ack":
                return
    raise AssertionError("the server never acknowledged the heartbeat sent after clear_cache")


def test_a_strangers_cache_clear_is_refused(app_url, new_page, browser_project, passwords) -> None:
    """Streamlit lets any websocket client clear the server's caches; `serve`'s gate (ui/gate.py) drops the request
    of a client without a session, says so in the server log, and the annotator labels on."""
    from browser_steps import press, wait_for_other_image

    page = new_page()
    sign_in(page, app_url, "carol", passwords["carol"])
    first = shown_image_id(page)
    press(page, "1")
    second = wait_for_other_image(page, first)
    before = browser_project.db.current_labels()
    log = ARTIFACTS / "streamlit.log"
    refusals = log.read_text(errors="replace").count(REFUSED)
    _clear_cache_as_a_stranger(app_url)
    deadline = time.monotonic() + 10
    while log.read_text(errors="replace").count(REFUSED) == refusals:
        assert time.monotonic() < deadline, "the server did not refuse the stranger's clear-cache request"
        time.sleep(0.1)
    press(page, "2")
    wait_for_other_image(page, second)  # still signed in, the next image decoded again
    after = browser_project.db.current_labels()
    carol = after[after["annotator"] == "carol"].set_index("image_id")["label"]
    assert carol.loc[first] == browser_project.classes[0] and carol.loc[second] == browser_project.classes[1]
    assert len(after) == len(before) + 1 and page.get_by_label("Password", exact=True).count() == 0


def test_review_cards_arrive_inline_too(app_url, new_page, passwords) -> None:
    page = new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, app_url, "lena", passwords["lena"])
    page.get_by_role("link", name="Review").click()
    page.get_by_text("Image history", exact=True).click()
    card = page.locator("[class*='st-key-history-card-'] img").first
    try:
        card.wait_for()
    except Exception:  # noqa: BLE001 - say what the page shows instead
        raise explain_failure(page, "the review page showed no card picture") from None
    assert (card.get_attribute("src") or "").startswith("data:image/png;base64,")
    page.wait_for_timeout(500)
    assert not [u for u in requested if urlparse(u).path.startswith("/media/")]

"""The real app in headless Chromium: sign-in, keyboard labeling, undo, roles, two annotators at once."""

from __future__ import annotations

import io
import re

import pandas as pd
import pytest
from browser_steps import (
    explain_failure,
    press,
    screenshot,
    shown_image_id,
    sign_in,
    wait_for_other_image,
)

pytestmark = pytest.mark.browser


def current_labels(project, annotator: str) -> pd.DataFrame:
    labels = project.db.current_labels()
    return labels[labels["annotator"] == annotator]


def test_wrong_password_is_refused(app_url, new_page, browser_project, passwords) -> None:
    page = new_page()
    page.goto(app_url)
    page.get_by_label("Username", exact=True).wait_for()
    assert "ui-test" not in page.content()  # nothing of the project before sign-in
    screenshot(page, "signin")
    sign_in(page, app_url, "alice", "not-her-password")
    page.get_by_text("Wrong username or password.").wait_for()
    assert page.locator(".st-key-label-image").count() == 0
    assert page.get_by_label("Password", exact=True).is_visible()
    failed = browser_project.db.events("signin_failed")
    assert (failed["actor"] == "alice").any()


def test_label_five_images_with_the_keyboard_then_undo(app_url, new_page, browser_project, passwords) -> None:
    page = new_page()
    sign_in(page, app_url, "alice", passwords["alice"])
    image_id = shown_image_id(page)
    screenshot(page, "label")
    classes = browser_project.classes
    given: dict[int, str] = {}
    for k in range(5):
        press(page, str(k % len(classes) + 1))
        given[image_id] = classes[k % len(classes)]
        image_id = wait_for_other_image(page, image_id)
    mine = current_labels(browser_project, "alice")
    assert dict(zip(mine["image_id"], mine["label"], strict=True)) == given
    assert (mine["source"] == "ui").all() and (mine["seconds_spent"] > 0).all()
    assert not set(given) & set(browser_project.db.images("test")["id"])

    last = list(given)[-1]
    press(page, "z")
    assert wait_for_other_image(page, image_id) == last  # the undone image comes back
    mine = current_labels(browser_project, "alice")
    assert set(mine["image_id"]) == set(given) - {last}
    press(page, "2")
    wait_for_other_image(page, last)
    mine = current_labels(browser_project, "alice")
    assert mine.set_index("image_id").loc[last, "label"] == classes[1]
    assert len(mine) == 5


def test_annotator_cannot_open_export(app_url, new_page, passwords) -> None:
    page = new_page()
    sign_in(page, app_url, "dave", passwords["dave"])
    shown_image_id(page)
    assert page.get_by_role("link", name="Export").count() == 0
    sign_in(page, app_url + "/export", "dave", passwords["dave"])  # by its address: refused after sign-in
    page.get_by_text("Your account may not open this page.").wait_for()
    assert page.get_by_text("Export labels").count() == 0
    assert page.locator(".st-key-export-downloads").count() == 0


def test_lead_downloads_the_labeled_set(app_url, new_page, browser_project, passwords) -> None:
    browser_project.db.add_label(int(browser_project.db.images("pool")["id"].iloc[-1]), "Normal", "lena",
                                 source="cli")
    page = new_page()
    sign_in(page, app_url, "lena", passwords["lena"])
    shown_image_id(page)
    page.get_by_role("link", name="Export").click()
    page.get_by_text("Export labels").wait_for()
    page.locator(".st-key-export-downloads").wait_for()
    screenshot(page, "export")
    with page.expect_download() as download:
        page.get_by_role("button", name="CSV", exact=True).click()
    frame = pd.read_csv(io.BytesIO(download.value.path().read_bytes()))
    expected = browser_project.db.current_labels()["image_id"].nunique()
    assert len(frame) == expected and {"image_id", "label", "annotators", "agreement"} <= set(frame.columns)
    assert download.value.suggested_filename == "ui-test-labels-all.csv"


def test_two_annotators_at_once_get_disjoint_images_and_lose_no_label(app_url, new_page, browser_project,
                                                                      passwords) -> None:
    pages = {name: new_page() for name in ("bob", "carol")}
    before = {name: set(current_labels(browser_project, name)["image_id"]) for name in pages}  # other tests' labels
    for name, page in pages.items():
        sign_in(page, app_url, name, passwords[name])
    shown = {name: shown_image_id(page) for name, page in pages.items()}
    seen: dict[str, list[int]] = {name: [] for name in pages}
    for k in range(5):
        for name, page in pages.items():  # both press before either waits: the server handles them together
            seen[name].append(shown[name])
            press(page, str(k % 4 + 1))
        for name, page in pages.items():
            shown[name] = wait_for_other_image(page, shown[name])
    assert not set(seen["bob"]) & set(seen["carol"])
    assert shown["bob"] != shown["carol"]
    for name in pages:
        labels = current_labels(browser_project, name)
        assert sorted(set(labels["image_id"]) - before[name]) == sorted(seen[name])


def test_lead_trains_from_the_dashboard_and_sees_the_point(app_url, new_page, browser_project, passwords) -> None:
    """Train now on the dashboard runs a real round (probe on un-pretrained embeddings) to the curve.

    Runs last: the round refreshes the queue the other tests label from."""
    labeled = set(browser_project.db.current_labels()["image_id"])
    pool = [int(i) for i in browser_project.db.images("pool")["id"] if int(i) not in labeled]
    for k, image_id in enumerate(pool[:8]):  # two classes at least, so a model can be trained
        browser_project.db.add_label(image_id, browser_project.classes[k % 2], "lena", source="cli")
    page = new_page()
    sign_in(page, app_url, "lena", passwords["lena"])
    shown_image_id(page)
    page.get_by_role("link", name="Progress").click()
    page.get_by_role("button", name="Train now", exact=True).click()
    try:
        page.locator(".st-key-dash-latest-point").wait_for(timeout=240_000)
    except Exception:
        raise explain_failure(page, "no training point appeared on the dashboard") from None
    rounds = browser_project.db.rounds("train")
    done = rounds[rounds["status"] == "done"]
    assert len(done) == 1, rounds[["id", "status", "error"]]
    point = page.locator(".st-key-dash-latest-point").inner_text()
    assert f"Round {int(done['id'].iloc[0])}: test macro-AUC" in point
    assert page.get_by_role("button", name="Train now", exact=True).is_visible()
    screenshot(page, "dashboard")

    page.get_by_role("link", name="Review").click()
    page.get_by_role("heading", name="Review").wait_for()
    page.get_by_text(re.compile(r"images; showing|No disagreements")).first.wait_for()
    screenshot(page, "review")

    admin = new_page()
    sign_in(admin, app_url, "root", passwords["root"])
    shown_image_id(admin)
    admin.get_by_role("link", name="Accounts").click()
    admin.get_by_role("heading", name="Accounts").wait_for()
    screenshot(admin, "accounts")

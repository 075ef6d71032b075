"""Review page: model-versus-label disagreements, least confident predictions, class galleries with
Grad-CAM++ overlays, the latest confusion matrix, and relabeling with the full label history.

Annotators review their own labels; leads and admins review everyone's. Overlays are computed only
when switched on, only for the cards on the visible page (six), in one batch per page, and kept per
(round, image id), so paging back or relabeling costs nothing; on a CPU a page takes a few seconds
the first time. Pictures travel inside the page as PNG (ui.viewer.show_png), never through /media/ URLs.
"""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st
from PIL import Image

from active.views import explain, review
from store.errors import CxrAlError
from store.project import Project
from ui import session, viewer

PAGE_SIZE = 6
CARD_COLUMNS = 3
THUMBNAIL_SIDE = 320
MAX_OVERLAYS = 512  # per round, about 100 KB each
MESSAGE_KEY = "review_message"
ALL = "(all annotators)"
VIEWS = ("Disagreements", "Least confident", "Class gallery", "Confusion matrix", "Image history")


@st.cache_resource(show_spinner=False)
def _overlay_store(project_root: str, round_id: int) -> dict[int, bytes]:
    """Overlays computed so far under one round's model (image id -> small PNG), shared by all sessions."""
    return {}


def _small_png(png_bytes: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    picture = Image.open(io.BytesIO(png_bytes))
    picture.thumbnail((side, side))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def overlays_for(project: Project, round_id: int, image_ids: list[int]) -> dict[int, bytes]:
    """Grad-CAM++ overlays (predicted class) of the visible cards, cached per (round, image id); the
    missing ones are computed in one batch, so one model load serves a whole page. CxrAlError when the
    round has no model to explain."""
    store = _overlay_store(str(project.root), int(round_id))
    missing = [int(i) for i in image_ids if int(i) not in store]
    if missing:
        with st.spinner(f"Computing Grad-CAM++ for {len(missing)} image(s) ..."):
            for result in explain.explain(project, missing, round_id=int(round_id)):
                store[int(result["image_id"])] = _small_png(result["overlay_png"])
        while len(store) > MAX_OVERLAYS:  # oldest first: dicts keep insertion order
            store.pop(next(iter(store)))
    return {int(i): store[int(i)] for i in image_ids if int(i) in store}


def _say(text: str) -> None:
    st.session_state[MESSAGE_KEY] = text


def _on_relabel(project: Project, image_id: int, label: str, user: dict[str, str]) -> None:
    now = session.current_user()  # the account as it is now (this run's cookie), not as the page was drawn
    if now is None or now["name"] != user["name"] or not session.allowed("review_own"):
        return  # the page run that follows shows why
    user = now
    try:
        review.relabel(project, image_id, label, user["name"], any_image=review.can_review_all(user["role"]))
    except CxrAlError as exc:
        _say(f":orange[{exc}]")
        return
    _say(f"Image {image_id} relabeled **{label}** (the earlier label is kept as superseded)")


def _relabel_buttons(project: Project, image_id: int, own_label: str | None, user: dict[str, str],
                     key: str) -> None:
    """One button per class; the reviewer's current label of the image is the disabled one."""
    with st.container(horizontal=True, key=f"{key}-relabel"):
        for i, cls in enumerate(project.classes):
            st.button(cls, key=f"{key}_relabel_{i}", disabled=cls == own_label, on_click=_on_relabel,
                      args=(project, image_id, cls, user), help=f"Relabel image {image_id} as {cls}")


def _picture(item: pd.Series, overlay: bytes | None) -> tuple[bytes | None, str | None]:
    """(PNG of the card: its overlay when there is one, else the image; a note when it cannot be shown)."""
    if overlay is not None:
        return overlay, None
    try:
        return viewer.thumbnail(str(item["path"]), THUMBNAIL_SIDE), None
    except CxrAlError as exc:
        return None, f"image cannot be shown: {exc}"


def _page_overlays(project: Project, items: pd.DataFrame, wanted: bool) -> dict[int, bytes]:
    """The overlays of these cards when switched on (a note says why when the model cannot be explained)."""
    rounds = items["model_round"].dropna().unique() if wanted and "model_round" in items.columns else []
    if len(rounds) == 0:
        return {}
    try:
        return overlays_for(project, int(rounds[0]), [int(i) for i in items["image_id"]])
    except CxrAlError as exc:
        st.caption(f"no overlay: {exc}")
        return {}


def _describe(item: pd.Series) -> str:
    label = item.get("label")
    text = f"**{label}**" if isinstance(label, str) else "unlabeled"
    if isinstance(item.get("labeled_by"), str):  # one name, or 'alice=Normal;bob=Consolidation'
        text += " · " + item["labeled_by"].replace("=", ": ").replace(";", ", ")
    if pd.notna(item.get("pred")):
        text += f"  \nmodel: **{item['pred']}** ({float(item['confidence']):.2f})"
        if isinstance(label, str) and pd.notna(item.get("prob_label")):
            text += f", p({label}) {float(item['prob_label']):.2f}"
    return text


def _card(project: Project, item: pd.Series, user: dict[str, str], own: dict[int, str],
          history: bool, overlay: bytes | None, key: str) -> None:
    image_id = int(item["image_id"])
    with st.container(border=True, key=f"{key}-card-{image_id}"):
        picture, note = _picture(item, overlay)
        if picture is not None:
            viewer.show_png(picture, alt=f"chest radiograph, image {image_id}",
                            caption="Grad-CAM++ of the predicted class" if overlay is not None else None)
        st.markdown(f"Image {image_id}: {_describe(item)}")
        if note:
            st.caption(note)
        _relabel_buttons(project, image_id, own.get(image_id), user, f"{key}_{image_id}")
        if history:
            st.dataframe(review.label_history_table(project, image_id), hide_index=True,
                         column_order=["label", "annotator", "created_at", "status", "superseded_by", "superseded_at"])


def _gallery(project: Project, items: pd.DataFrame, user: dict[str, str], own: dict[int, str],
             options: dict[str, bool], key: str, empty: str) -> None:
    """One page of cards (PAGE_SIZE) with a page selector; only these cards are drawn and explained."""
    if items.empty:
        st.info(empty)
        return
    pages = (len(items) + PAGE_SIZE - 1) // PAGE_SIZE
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page"))
    shown = items.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    st.caption(f"{len(items)} images; showing {len(shown)}")
    overlays = _page_overlays(project, shown, options["overlays"])
    columns = st.columns(CARD_COLUMNS)
    for n, (_, item) in enumerate(shown.iterrows()):
        with columns[n % CARD_COLUMNS]:
            _card(project, item, user, own, options["history"], overlays.get(int(item["image_id"])), key)


def _image_history(project: Project, user: dict[str, str], scope: str | None,
                   own: dict[int, str], options: dict[str, bool]) -> None:
    """Any image by id (annotators: images they labeled): its picture, label history and relabel buttons."""
    image_id = int(st.number_input("Image id", min_value=1, step=1, key="review_image_id"))
    if scope is not None and image_id not in own:
        st.info(f"Image {image_id} has no label of yours; you can review only images you labeled.")
        return
    try:
        info = project.db.image(image_id)
    except CxrAlError as exc:
        st.warning(str(exc))
        return
    reviewed = review.review_items(project, scope)
    match = reviewed[reviewed["image_id"] == image_id]
    item = match.iloc[0] if len(match) else pd.Series(
        {"image_id": image_id, "path": info["path"], "label": None, "labeled_by": None, "model_round": None})
    overlay = _page_overlays(project, pd.DataFrame([item]), options["overlays"]).get(image_id)
    _card(project, item, user, own, False, overlay, "history")
    st.markdown("**Label history**")
    with st.container(key="review-history-table"):
        st.dataframe(review.label_history_table(project, image_id), hide_index=True)


def _confusion(project: Project, scope: str | None) -> None:
    round_id, matrix = review.latest_confusion_matrix(project)
    if matrix is None:
        st.info("No training round with a scored test split yet.")
    else:
        st.markdown(f"**Test split, round {round_id}** (rows: true class, columns: predicted)")
        with st.container(key="review-confusion-test"):
            st.dataframe(matrix)
    st.markdown("**Labels versus the latest model**" + (" (your labels)" if scope else " (consensus labels)"))
    table = review.labels_vs_predictions(project, scope)
    if int(table.to_numpy().sum()) == 0:
        st.caption("No labeled image has a prediction yet.")
    else:
        with st.container(key="review-confusion-labels"):
            st.dataframe(table)


def render() -> None:
    """The review page for the signed-in account."""
    user = session.require("review_own")
    project = session.project()
    reviews_all = review.can_review_all(user["role"])
    st.title("Review")
    with st.sidebar:
        overlays = st.toggle("Grad-CAM++ overlays", value=False, key="review_overlays",
                             help="Heatmaps of what the latest model looks at (computed for the visible cards)")
        history = st.toggle("Label history on cards", value=False, key="review_card_history")
    scope: str | None = user["name"]
    if reviews_all:
        names = [str(n) for n in project.db.annotators()["name"] if n != "import"]
        chosen = st.selectbox("Whose labels", [ALL, *names], key="review_scope")
        scope = None if chosen == ALL else chosen
    else:
        st.caption(f"Your labels, {user['name']}.")
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message:
        st.markdown(message)
    current = project.db.current_labels()
    mine = current[current["annotator"] == user["name"]]
    own = {int(i): str(lab) for i, lab in zip(mine["image_id"], mine["label"], strict=True)}
    options = {"overlays": overlays, "history": history}
    view = st.radio("View", VIEWS, horizontal=True, key="review_view", label_visibility="collapsed")
    if view == "Disagreements":
        st.caption("Labeled images the latest model predicts otherwise, its most confident objections first.")
        _gallery(project, review.model_disagreements(project, scope), user, own, options, "disagree",
                 "No disagreements: either no model yet or the model agrees with every label.")
    elif view == "Least confident":
        st.caption("The latest model's least confident predictions" +
                   (" on your labeled images." if scope else " on the pool."))
        _gallery(project, review.least_confident(project, scope), user, own, options, "unsure",
                 "No predictions yet: run a training round first.")
    elif view == "Class gallery":
        cls = st.selectbox("Class", project.classes, key="review_class")
        _gallery(project, review.class_gallery(project, cls, scope), user, own, options, "gallery",
                 f"No image labeled {cls}" + (" by you" if scope == user["name"] else "") + " yet.")
    elif view == "Confusion matrix":
        _confusion(project, scope)
    else:
        _image_history(project, user, None if reviews_all else user["name"], own, options)


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.review import render as _render

    _render()

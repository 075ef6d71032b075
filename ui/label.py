"""Label page: the annotator's next suggested image, large, with one key per class.

Keys: 1-9 the classes in the configured order, s skip, u unsure (goes to a second reader), z undo.
The image and its buttons live in a fragment, so a label redraws only that part of the page.
The image is windowed on the file's own values (12/16-bit DICOM after its rescale, 16-bit PNG/TIFF) and reaches
the browser as a lossless PNG inside the page (ui.viewer.show_png), never through Streamlit's /media/ URLs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from active.engine import labeling, policy
from active.views import explain
from store.errors import CxrAlError
from store.export import labeled_set
from store.images import NativeInfo
from store.project import Project, open_project
from ui import session, viewer

SESSION_KEY = "label_session"
MESSAGE_KEY = "label_message"
ROUND_CHECK_KEY = "label_round_check"
LATEST_ROUND_KEY = "label_latest_round"
LABELS_REFRESH_S = 30  # the neighbour panel's view of who labeled what is refreshed this often
WINDOW_FOR_KEY = "view_window_for"  # (image path, preset) the level and width fields were last set for
VIEW_DEFAULTS = {"view_preset": viewer.FILE_DEFAULT, "view_zoom": 1.0, "view_pan_x": 50, "view_pan_y": 50}
WINDOW_SOURCES = {"dicom-window": "the file's window", "dicom-voi-lut": "the file's VOI LUT range",
                  "full-range": "full range (the file has no window)", "8-bit": "as stored"}
PRESET_HELP = ("File default: the window stored in the file (DICOM), else its full range (8-bit images as "
               "stored). Lung / Mediastinum / Bone: CT windows in HU on CT data; on radiographs, which have no "
               "HU, the same windows relative to the image's own 1st-99th percentile range (air = -1000, "
               "dense bone = +1000). The preset stays for the next images; Level and Width change this one.")


def reason_text(current: dict[str, Any]) -> str:
    """Why this image is shown, in words (strategy and score)."""
    strategy, score = current.get("strategy"), current.get("score")
    if current.get("source") == "undo":
        return "your last label was undone: label it again"
    if strategy == "second-read":
        return "second reading: another annotator was unsure"
    if strategy == "double-read":
        return "double reading: another annotator labeled it (agreement check)"
    if current.get("source") == "pool" or strategy == "pool-order" or not strategy:
        return "no suggestion queued: next unlabeled pool image (id order)"
    if strategy.startswith("auto:"):
        part = strategy.split(":", 1)[1]
        text = ("random share of auto's batch (an unbiased sample: it measures whether active picks pay off)"
                if part == "random" else f"suggested by **{part}** (auto's choice)")
    else:
        text = f"suggested by **{strategy}**"
    if score is not None:
        text += f", score {float(score):.3f}"
    if current.get("model_round") is not None:
        text += f", model round {int(current['model_round'])}"
    return text


def labeling_session(project: Project, annotator: str) -> labeling.LabelingSession:
    """This browser session's LabelingSession (one per signed-in annotator)."""
    ls = st.session_state.get(SESSION_KEY)
    if ls is None or ls.annotator != annotator:
        ls = labeling.start_labeling(project, annotator)
        st.session_state[SESSION_KEY] = ls
    ls.project = project  # project.yaml may have changed (classes, round policy)
    return ls


# ----------------------------------------------------------------------------- callbacks (run before the redraw)
def _say(text: str) -> None:
    st.session_state[MESSAGE_KEY] = text


def _on_label(ls: labeling.LabelingSession, image_id: int, label: str) -> None:
    if not session.allowed("label", ls.session_key):
        return  # the page run that follows shows why (signed out, expired ...)
    try:
        labeling.label_current(ls, label, image_id=image_id)
    except CxrAlError as exc:
        _say(f":orange[{exc}]")
        return
    _say(f"Image {image_id}: **{label}** saved (z undoes)")
    st.session_state[ROUND_CHECK_KEY] = True


def _on_skip(ls: labeling.LabelingSession, image_id: int) -> None:
    if not session.allowed("label", ls.session_key):
        return  # the page run that follows shows why (signed out, expired ...)
    try:
        labeling.skip_current(ls, image_id=image_id)
    except CxrAlError as exc:
        _say(f":orange[{exc}]")
        return
    _say(f"Image {image_id} skipped")


def _on_unsure(ls: labeling.LabelingSession, image_id: int) -> None:
    if not session.allowed("label", ls.session_key):
        return  # the page run that follows shows why (signed out, expired ...)
    try:
        requeued = labeling.mark_unsure(ls, image_id=image_id)
    except CxrAlError as exc:
        _say(f":orange[{exc}]")
        return
    _say(f"Image {image_id} marked unsure" + (": queued for a second reader" if requeued else ""))


def _on_undo(ls: labeling.LabelingSession) -> None:
    if not session.allowed("label", ls.session_key):
        return  # the page run that follows shows why (signed out, expired ...)
    try:
        undone = labeling.undo_last_label(ls)
    except CxrAlError as exc:
        _say(f":orange[{exc}]")
        return
    _say("Nothing to undo" if undone is None else
         f"Label **{undone['label']}** of image {undone['image_id']} withdrawn")


def _reset_view() -> None:
    for key, value in VIEW_DEFAULTS.items():
        if key != "view_preset":  # the chosen preset stays; its window is applied again
            st.session_state[key] = value
    st.session_state[WINDOW_FOR_KEY] = None


# ----------------------------------------------------------------------------- drawing
def _window_controls(info: NativeInfo | None, path: str) -> tuple[float, float]:
    """Preset, level and width in the image's own units; a new image or preset starts from the preset's window."""
    preset = st.selectbox("Window preset", viewer.PRESETS, key="view_preset", help=PRESET_HELP)
    if info is not None and st.session_state.get(WINDOW_FOR_KEY) != (path, preset):
        center, width = viewer.preset_window(info, preset)
        st.session_state["view_level"], st.session_state["view_width"] = float(center), float(width)
        st.session_state[WINDOW_FOR_KEY] = (path, preset)
    units = f" ({info.units})" if info is not None and info.units else ""
    span = 255.0 if info is None else max(info.value_range[1] - info.value_range[0], 1e-6)
    step = max(1.0, float(np.round(span / 200))) if info is None or info.voi_function == "LINEAR" else span / 200
    with st.container(horizontal=True):
        level = st.number_input(f"Level{units}", step=step, format="%g", key="view_level")
        width = st.number_input(f"Width{units}", min_value=1e-6, step=step, format="%g", key="view_width")
    if info is not None:
        inverted = ", MONOCHROME1 (inverted)" if info.inverted else ""
        st.caption(f"{info.bits_stored}-bit values {info.value_range[0]:g} to {info.value_range[1]:g}{units}"
                   f"{inverted}; file default: {WINDOW_SOURCES.get(info.window_source, info.window_source)}")
    return float(level), float(width)


def _view_controls(info: NativeInfo | None, path: str) -> dict[str, float]:
    for key, value in VIEW_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    level, width = _window_controls(info, path)
    zoom = st.slider("Zoom", 1.0, 8.0, step=0.5, key="view_zoom")
    pan_x = pan_y = 50
    if zoom > 1:
        pan_x = st.slider("Pan left-right", 0, 100, key="view_pan_x")
        pan_y = st.slider("Pan up-down", 0, 100, key="view_pan_y")
    st.button("Reset view", key="view_reset", on_click=_reset_view)
    return {"center": level, "width": width, "zoom": zoom, "center_x": pan_x / 100, "center_y": pan_y / 100}


def _details(project: Project, image_id: int) -> None:
    info = project.db.image(image_id)
    st.markdown("**Image details**")
    st.caption(f"{info['width']} x {info['height']} px, {info['format']}"
               f"{', ' + info['modality'] if info.get('modality') else ''}; id {image_id}, "
               f"sha256 {str(info['sha256'])[:12]}")


def _action_buttons(ls: labeling.LabelingSession, image_id: int | None) -> None:
    with st.container(horizontal=True, key="label-buttons"):
        if image_id is not None:
            for i, cls in enumerate(ls.project.classes):
                st.button(cls, key=f"label_class_{i}", shortcut=str(i + 1) if i < 9 else None, type="primary",
                          on_click=_on_label, args=(ls, image_id, cls))
            st.button("Skip", key="label_skip", shortcut="S", on_click=_on_skip, args=(ls, image_id))
            st.button("Unsure", key="label_unsure", shortcut="U", on_click=_on_unsure, args=(ls, image_id),
                      help="Not sure: the image goes to a second reader")
        st.button("Undo", key="label_undo", shortcut="Z", on_click=_on_undo, args=(ls,),
                  help="Withdraw your last label and show that image again")


@st.cache_data(max_entries=4, show_spinner=False)
def _round_predictions(root: str, round_id: int) -> dict[int, list[float]]:
    """Class probabilities of one training round's model for every image (kept while the round is the latest)."""
    predictions = open_project(root).db.predictions(round_id)
    return {int(i): [float(p) for p in probs] for i, probs in zip(predictions["image_id"], predictions["probs"],
                                                                   strict=True)}


@st.cache_data(max_entries=64, show_spinner=False)
def _overlay(root: str, round_id: int, image_id: int) -> tuple[bytes, str]:
    """Grad-CAM++ overlay PNG of the predicted class, and that class (computed once per round and image)."""
    (result,) = explain.explain(open_project(root), [image_id], round_id=round_id)
    return result["overlay_png"], result["class"]


@st.cache_data(max_entries=4, show_spinner=False)
def _labeled_images(root: str, labels_stamp: int) -> pd.DataFrame:
    """Labeled images (image_id, consensus label, path), recomputed when the labels change."""
    frame = labeled_set(open_project(root).db)  # the recorded paths: the export view leaves them out
    return frame[["image_id", "label", "path"]].reset_index(drop=True)


@st.cache_data(max_entries=64, show_spinner=False)
def _labeled_neighbours(root: str, index_stamp: float, labels_stamp: int, image_id: int,
                        k: int) -> list[dict[str, Any]]:
    """The k most similar already-labeled images in the FAISS index (recomputed when the index changes)."""
    labeled = _labeled_images(root, labels_stamp)
    found = explain.neighbors(open_project(root), image_id, k=max(50, 8 * k), labels=labeled)
    found = found[(found["image_id"] != image_id) & found["label"].notna()].head(k)
    paths = labeled.set_index("image_id")["path"]
    return [{"image_id": int(r.image_id), "label": str(r.label), "similarity": float(r.similarity),
             "path": str(paths.loc[int(r.image_id)])} for r in found.itertuples()]


def _prediction_panel(ls: labeling.LabelingSession, image_id: int, round_id: int | None,
                      show_overlay: bool) -> None:
    st.markdown("**Model**")
    if round_id is None:
        st.caption("No model yet: the first training round runs after "
                   f"{int(ls.project.round_policy.get('train_every') or 0) or 'some'} labels.")
        return
    probs = _round_predictions(str(ls.project.root), round_id).get(image_id)
    if probs is None:
        st.caption(f"Round {round_id} has no prediction for this image.")
        return
    best = int(np.argmax(probs))
    with st.container(key="label-prediction"):
        st.markdown(f"Round {round_id}: **{ls.project.classes[best]}** ({probs[best]:.0%})")
        for cls, p in sorted(zip(ls.project.classes, probs, strict=True), key=lambda t: -t[1])[:4]:
            st.progress(min(1.0, max(0.0, p)), text=f"{cls} {p:.2f}")
    if show_overlay:
        try:
            with st.spinner("Grad-CAM++ ..."):
                overlay, cls = _overlay(str(ls.project.root), round_id, image_id)
        except CxrAlError as exc:
            st.caption(f"No heatmap: {exc}")
        else:
            viewer.show_png(overlay, alt=f"Grad-CAM++ heatmap of image {image_id}",
                            caption=f"Grad-CAM++ for {cls} (round {round_id})")


def _neighbour_panel(ls: labeling.LabelingSession, image_id: int, k: int = 4) -> None:
    st.markdown("**Similar labeled images**")
    stamp = explain.embeddings_stamp(ls.project)
    if stamp is None:
        st.caption("No embedding index yet (run `cxr-al embed`).")
        return
    labels_stamp = int(time.time() // LABELS_REFRESH_S)  # everyone's labels, at most this many seconds old
    try:
        found = _labeled_neighbours(str(ls.project.root), stamp, labels_stamp, image_id, k)
    except CxrAlError as exc:
        st.caption(f"Unavailable: {exc}")
        return
    if not found:
        st.caption("No labeled image nearby yet.")
        return
    cols = st.columns(2)
    for j, item in enumerate(found):
        try:
            thumb = viewer.thumbnail(item["path"], 160)
        except CxrAlError:
            continue
        with cols[j % 2]:
            viewer.show_png(thumb, alt=f"labeled image {item['image_id']}",
                            caption=f"{item['label']} · {item['similarity']:.2f}")


@st.cache_data(ttl=3, show_spinner=False, max_entries=8)
def _round_progress(root: str) -> dict[str, Any]:
    """round_progress, shared by every annotator's page for a few seconds (each polls it every 5 s)."""
    from active.views.status import round_progress

    return round_progress(open_project(root))


@session.fragment("label", run_every=5)
def round_status(ls: labeling.LabelingSession) -> None:
    """The training round in progress, or the model in use; a finished round refreshes the queue."""
    info = _round_progress(str(ls.project.root))
    with st.container(key="label-round"):
        if info["running"] is not None:
            run = info["running"]
            st.markdown(f"**Training round {run['id']}** running ({run['elapsed_s']:.0f} s): "
                        "keep labeling, new suggestions follow.")
            st.progress(run["fraction"] if run["fraction"] is not None else 0.0, text=run["stage"])
        elif info["latest"] is not None:
            st.caption(f"Model: round {info['latest']['id']} on {info['latest']['n_train']} labels; "
                       f"next round after {info['labels_to_next']} more labels"
                       if info["labels_to_next"] is not None else f"Model: round {info['latest']['id']}")
        elif info["labels_to_next"] is not None:
            st.caption(f"First training round after {info['labels_to_next']} more labels")
        if info["failed"] is not None:
            st.caption(f":orange[Round {info['failed']['id']} failed: {info['failed']['error']}]")
    latest = None if info["latest"] is None else int(info["latest"]["id"])
    seen = st.session_state.get(LATEST_ROUND_KEY, latest)
    st.session_state[LATEST_ROUND_KEY] = latest
    if latest is not None and latest != seen:
        ls.refreshed_at = float("-inf")  # the next image comes from the fresh queue
        st.toast(f"Round {latest} finished: suggestions refreshed")


def _warm(root: str, items: list[dict[str, Any]], round_id: int | None) -> None:
    """Decode the next images (and compute their overlays) into the caches the page reads."""
    for item in items:
        try:
            viewer.native_image(item["path"])
            if round_id is not None:
                _overlay(root, int(round_id), int(item["image_id"]))
        except Exception:  # noqa: BLE001 - a warm-up failure shows (with its reason) when the image is shown
            pass


def _prefetch(ls: labeling.LabelingSession, overlay_round: int | None) -> None:
    """Warm the caches for the next image in a background thread, after this one is drawn."""
    items = labeling.upcoming(ls, 1)
    if items:
        threading.Thread(target=_warm, args=(str(ls.project.root), items, overlay_round), daemon=True).start()


@session.fragment("label")
def labeling_panel(ls: labeling.LabelingSession, panels: dict[str, bool]) -> None:
    """The image, its context and the label buttons; reruns alone after each key press."""
    message = st.session_state.get(MESSAGE_KEY)
    try:
        current = labeling.current_image(ls)
    except CxrAlError as exc:
        st.error(str(exc))
        return
    if current is None:
        st.success("Nothing left to label for you right now: every suggestion and pool image is done. "
                   "New suggestions appear here after the next round.")
        if message:
            st.caption(message)
        _action_buttons(ls, None)
        return
    image_id = int(current["image_id"])
    path = str(current["path"])
    try:
        values, info = viewer.native_image(path)
    except CxrAlError as exc:
        values, info, failure = None, None, exc
    col_image, col_side = st.columns([4, 1], gap="medium")
    with col_side:
        with st.container(key="label-info"):
            if current["source"] == "pool":
                st.markdown(f"### Pool · {int(current['remaining'])} left")
            else:
                st.markdown(f"### {ls.done + 1} / {ls.done + int(current['remaining'])}")
            st.caption(f"Image {image_id} · {reason_text(current)}")
        view = _view_controls(info, path)
        if panels["prediction"] or panels["overlay"]:
            _prediction_panel(ls, image_id, st.session_state.get(LATEST_ROUND_KEY), panels["overlay"])
        if panels["neighbours"]:
            _neighbour_panel(ls, image_id)
        if panels["details"]:
            _details(ls.project, image_id)
    with col_image:
        _action_buttons(ls, image_id)
        st.caption(message or "Keys: 1-9 label, s skip, u unsure, z undo")
        with st.container(key="label-image"):
            if values is None:
                st.error(f"Image {image_id} cannot be shown: {failure}. Skip it (s).")
            else:
                viewer.show_png(viewer.png(viewer.render_native(values, info, **view)),
                                alt=f"chest radiograph, image {image_id}")
    _prefetch(ls, st.session_state.get(LATEST_ROUND_KEY) if panels["overlay"] else None)
    if st.session_state.pop(ROUND_CHECK_KEY, False):  # after drawing: never delays the next image
        threading.Thread(target=policy.start_round_if_due, args=(ls.project,), daemon=True).start()


def render() -> None:
    """The label page for the signed-in annotator."""
    user = session.require("label")
    project = session.project()
    ls = labeling_session(project, user["name"])
    with st.sidebar:
        st.markdown("**Panels**")
        panels = {
            "prediction": st.toggle("Model prediction", value=True, key="panel_prediction",
                                    help="The latest round's predicted class and confidence"),
            "overlay": st.toggle("Grad-CAM++ overlay", value=False, key="panel_overlay",
                                 help="Where the model looks (computed on first view; slower on a CPU)"),
            "neighbours": st.toggle("Similar labeled images", value=False, key="panel_neighbours",
                                    help="Nearest already-labeled images in the embedding index, with labels"),
            "details": st.toggle("Image details", value=False, key="panel_details",
                                 help="Size, format and hash of the shown image"),
        }
        round_status(ls)
    labeling_panel(ls, panels)


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.label import render as _render

    _render()

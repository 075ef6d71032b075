"""Labeling sessions: which image an annotator sees next, and what a key press on it does.

The label page keeps one LabelingSession per signed-in browser session. It serves the annotator's
own open queue entries first, then unassigned ones, then unlabeled pool images in id order; never a
test-split image, nor one the annotator labeled, skipped or marked unsure (skips and unsure marks
are the 'skip' / 'unsure' events). An image is claimed before it is shown, in one transaction: an
unassigned entry is assigned to the annotator only while it is still open and unassigned, a pool
image gets an entry (strategy 'pool-order') only while nobody has labeled it and no open entry
holds it. So when two annotators race for one image exactly one gets it, and concurrent sessions
see disjoint images.
'Unsure' closes the entry as 'unsure' and re-queues the image unassigned for a second reader; the
annotator who was unsure never gets it back. A snapshot of the queue and labels is kept for
SNAPSHOT_TTL_S seconds, and a key press costs one write: the label and the claim of the next image (which
tries up to CLAIM_BATCH candidates in that one transaction, so annotators colliding on the queue's head cost no
extra connections), not a handful of full-table reads. A stale snapshot costs nothing but order: claims are
atomic, and a finished round makes the page refresh it at once.
In the app a LabelingSession belongs to a sign-in session (active.views.sessions): its claims carry
that session, are refused once it is over, and go back to the queue (unassigned) when it ends: on
sign-out, revocation, or found idle or expired by the sweep each snapshot refresh runs. Its labels
are written only while it is live, and each one counts as a sign of life.
"""

from __future__ import annotations

import re
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from store.errors import CxrAlError
from store.project import Project

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


RESERVED_NAMES = {"import", "oracle", "system"}


def validate_annotator(name: str) -> str:
    """Annotator names are short identifiers; 'import' and 'oracle' are reserved for the system."""
    name = (name or "").strip()
    if not _NAME_RE.match(name):
        raise CxrAlError(f"annotator name {name!r} is not valid: use letters, digits and _ . @ - (max 64)")
    if name.lower() in RESERVED_NAMES:
        raise CxrAlError(f"annotator name {name!r} is reserved; choose another")
    return name


def record_label(project: Project, image_id: int, label: str, annotator: str, *,
                 seconds_spent: float | None = None, source: str = "cli", test_split: bool = False,
                 session: str | None = None) -> int:
    """Validate and store one label; it is committed when this returns. Returns the label id.

    A held-out test image is refused (CxrAlError) unless test_split: then the label is recorded with source
    'test-split' (store.db.TEST_SPLIT_SOURCE), shown as such, and test metrics still use the image's held-out
    ground truth (active.engine.rounds.ground_truth). session: the sign-in session it is given in (see
    store.db.ProjectDB.add_label)."""
    canonical, annotator = _validated(project, label, annotator, seconds_spent)
    return project.db.add_label(int(image_id), canonical, annotator, seconds_spent=seconds_spent, source=source,
                                test_split="mark" if test_split else "refuse", session=session)


def _validated(project: Project, label: str, annotator: str, seconds_spent: float | None) -> tuple[str, str]:
    """The class as the project spells it and the checked annotator name; CxrAlError for bad input."""
    canonical = project.canonical_class(label)
    annotator = validate_annotator(annotator)
    if seconds_spent is not None and not (0 <= float(seconds_spent) < 86400):
        raise CxrAlError("seconds spent must be between 0 and 86400")
    return canonical, annotator


def undo_label(project: Project, annotator: str) -> dict[str, Any] | None:
    """Withdraw the annotator's last label (the one before it, if any, becomes current again)."""
    return project.db.undo_last_label(validate_annotator(annotator))


SNAPSHOT_TTL_S = 60.0
SWEEP_EVERY_S = 15.0  # sessions that are over hand their claims back at most this often per process (a write)
_LAST_SWEEP: dict[str, float] = {}
CLAIM_BATCH = 16  # candidates one claim write tries: annotators walking one queue collide on its head

# The sign-in session (token hash) of the page run in progress: the app sets it on every run (ui.session.require),
# and start_labeling binds a new LabelingSession to it, so claims and labels made from that page carry it.
SIGNIN_SESSION: ContextVar[str | None] = ContextVar("cxr_al_signin_session", default=None)


@dataclass
class LabelingSession:
    """One annotator's labeling state: the image shown, what comes next, and what they have passed on."""

    project: Project
    annotator: str
    current: dict[str, Any] | None = None
    done: int = 0  # labels given in this session, less the ones undone
    last_label: dict[str, Any] | None = None
    candidates: deque = field(default_factory=deque)
    labeled: set[int] = field(default_factory=set)
    passed: set[int] = field(default_factory=set)
    paths: dict[int, str] = field(default_factory=dict)
    refreshed_at: float = float("-inf")
    session_key: str | None = None  # the sign-in session it belongs to (None: CLI, tests)


def start_labeling(project: Project, annotator: str, session_key: str | None = None) -> LabelingSession:
    """A labeling session for an annotator (nothing is claimed until an image is asked for), bound to a sign-in
    session: session_key, else the page run's (SIGNIN_SESSION)."""
    key = SIGNIN_SESSION.get() if session_key is None else session_key
    return LabelingSession(project, validate_annotator(annotator), session_key=key)


def current_image(session: LabelingSession) -> dict[str, Any] | None:
    """The image to show now (claiming the next one when none is shown); None when nothing is left.

    A dict with image_id, path, queue_id, strategy, score, model_round, source ('queue' | 'pool'
    | 'undo'), remaining (images of the same source left, this one included) and shown_at
    (time.monotonic() when it was picked)."""
    if session.current is None:
        session.current = _next_image(session)
    return session.current


def upcoming(session: LabelingSession, n: int = 1) -> list[dict[str, Any]]:
    """The next n candidates (image_id, path), without claiming them: for warming caches (pixels,
    heatmaps) while the annotator looks at the current image. Another annotator may still take them."""
    out = []
    for candidate in list(session.candidates):
        image_id = candidate["image_id"]
        if image_id in session.labeled or image_id in session.passed or image_id not in session.paths:
            continue
        out.append({"image_id": int(image_id), "path": session.paths[image_id]})
        if len(out) >= n:
            break
    return out


def label_current(session: LabelingSession, label: str, *, image_id: int | None = None,
                  seconds_spent: float | None = None) -> int:
    """Label the shown image (committed through record_label, source 'ui'); returns the label id.

    image_id, when given, must be the shown image: a key press meant for an image that is no longer
    shown raises CxrAlError instead of labeling another one. seconds_spent defaults to the time since
    the image was picked."""
    current = _shown(session, image_id)
    if seconds_spent is None:
        elapsed = time.monotonic() - current["shown_at"]
        seconds_spent = elapsed if elapsed < 86400 else None
    canonical, annotator = _validated(session.project, label, session.annotator, seconds_spent)
    # the same write takes the next image (when the snapshot is fresh): one connection per key press, not two
    fresh = time.monotonic() - session.refreshed_at <= SNAPSHOT_TTL_S
    batch = [c for c in (_take_batch(session) if fresh else []) if c["image_id"] != current["image_id"]]
    tried = _unclaimed(batch)
    try:
        label_id, got = session.project.db.add_label_then_claim(
            current["image_id"], canonical, annotator, _claim_keys(tried), seconds_spent=seconds_spent, source="ui",
            test_split="refuse", session=session.session_key)
    except BaseException:
        session.candidates.extendleft(reversed(batch))  # nothing was written: the batch is still to come
        raise
    session.labeled.add(current["image_id"])
    session.done += 1
    session.last_label = {"label_id": label_id, "image_id": current["image_id"], "label": canonical}
    chosen = _settle(session, batch, tried, got) if batch else None
    session.current = None if chosen is None else _shown_entry(session, chosen)
    return label_id


def skip_current(session: LabelingSession, *, image_id: int | None = None) -> None:
    """Pass on the shown image: its queue entry is closed as 'skipped' and it is not offered again."""
    current = _shown(session, image_id)
    _require_live(session)
    queue_id = _own_queue_id(session, current)
    if queue_id is not None:
        session.project.db.close_queue_entries([queue_id], "skipped")
    session.project.db.log_event("skip", session.annotator, image_id=current["image_id"], queue_id=queue_id)
    session.passed.add(current["image_id"])
    session.current = None


def mark_unsure(session: LabelingSession, *, image_id: int | None = None) -> bool:
    """Record that the annotator is unsure about the shown image and hand it to a second reader.

    The entry is closed as 'unsure', an 'unsure' event is logged and the image is re-queued for
    anyone else (annotator NULL, strategy 'second-read'); returns whether it was re-queued."""
    current = _shown(session, image_id)
    _require_live(session)
    db = session.project.db
    queue_id = _own_queue_id(session, current)
    if queue_id is not None:
        db.close_queue_entries([queue_id], "unsure")
    db.log_event("unsure", session.annotator, image_id=current["image_id"], queue_id=queue_id)
    requeued = db.add_to_queue([{"image_id": current["image_id"], "annotator": None, "strategy": "second-read",
                                 "score": current.get("score") or 0.0, "model_round": current.get("model_round"),
                                 "rank": 0}])
    session.passed.add(current["image_id"])
    session.current = None
    return bool(requeued)


def undo_last_label(session: LabelingSession) -> dict[str, Any] | None:
    """Withdraw the annotator's last label and show that image again; None when there is nothing to undo."""
    _require_live(session)
    undone = undo_label(session.project, session.annotator)
    if undone is None:
        return None
    image_id = int(undone["image_id"])
    session.labeled.discard(image_id)
    session.done = max(0, session.done - 1)
    session.last_label = None
    if session.current is not None:  # still claimed by this annotator: comes back after the relabel
        session.candidates.appendleft({**session.current, "claimed": True})
        session.current = None
    db = session.project.db
    if image_id not in session.paths:
        session.paths.update(_pool_paths(db, [image_id]))
    if image_id not in session.paths:  # a test-split image labeled elsewhere: withdrawn, not shown
        return undone
    queue = db.open_queue(session.annotator)
    entry = queue[queue["image_id"] == image_id]
    row = entry.iloc[0] if len(entry) else None
    session.current = {
        "image_id": image_id, "path": session.paths[image_id], "source": "undo",
        "queue_id": None if row is None else int(row["id"]),
        "strategy": None if row is None else _none_if_na(row["strategy"]),
        "score": None if row is None else _none_if_na(row["score"]),
        "model_round": None if row is None else _none_if_na(row["model_round"]),
        "remaining": 1 + sum(1 for c in session.candidates if c["source"] != "pool"), "shown_at": time.monotonic()}
    return undone


def _none_if_na(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value


def _require_live(session: LabelingSession) -> None:
    """CxrAlError when the sign-in session this labeling belongs to is over."""
    if session.session_key is None:
        return
    row = session.project.db.session(session.session_key)
    reason = "unknown" if row is None else row["end_reason"]
    if reason is not None:
        raise CxrAlError(f"your sign-in session has ended ({reason}): reload the page and sign in again")


def _shown(session: LabelingSession, image_id: int | None) -> dict[str, Any]:
    current = session.current
    if current is None or (image_id is not None and int(image_id) != current["image_id"]):
        raise CxrAlError("that image is no longer shown; look at the current image and try again")
    return current


def _own_queue_id(session: LabelingSession, current: dict[str, Any]) -> int | None:
    """The open queue entry holding the shown image for this annotator (looked up when a claim did not tell)."""
    if current.get("queue_id") is not None:
        return int(current["queue_id"])
    queue = session.project.db.open_queue(session.annotator)
    match = queue[(queue["image_id"] == current["image_id"]) & (queue["annotator"] == session.annotator)]
    return int(match["id"].iloc[0]) if len(match) else None


def _pool_paths(db: Any, image_ids: list[int]) -> dict[int, str]:
    images = db.images("pool")
    images = images[images["id"].isin(image_ids)]
    return {int(i): str(p) for i, p in zip(images["id"], images["path"], strict=True)}


def _passed_by(db: Any, annotator: str) -> set[int]:
    """Images the annotator skipped or was unsure about (from the event log)."""
    return db.event_image_ids(("skip", "unsure"), annotator)


def _refresh(session: LabelingSession) -> None:
    """Re-read the queue, the labels and the pool into the session's candidate list (after handing the claims of
    sign-in sessions that are over back to the queue)."""
    db = session.project.db
    if time.monotonic() - _LAST_SWEEP.get(str(db.path), float("-inf")) >= SWEEP_EVERY_S:
        _LAST_SWEEP[str(db.path)] = time.monotonic()
        db.end_stale_sessions()
    pool = db.images("pool")
    session.paths = {int(i): str(p) for i, p in zip(pool["id"], pool["path"], strict=True)}
    labels = db.current_labels()
    session.labeled = {int(i) for i in labels.loc[labels["annotator"] == session.annotator, "image_id"]}
    session.passed = _passed_by(db, session.annotator)
    queue = db.open_queue()
    skip = session.labeled | session.passed
    if session.current is not None:
        skip = skip | {session.current["image_id"]}
    candidates: deque = deque()
    seen: set[int] = set()
    mine = queue["annotator"] == session.annotator
    # own: claimed by this sign-in session (or by none: CLI, suggestions assigned to the annotator). Another of the
    # annotator's sessions' claims are not this one's: they return to the queue when that session ends.
    own = queue[mine & (queue["claim_session"].isna() | (queue["claim_session"] == session.session_key))]
    unassigned = queue[queue["annotator"].isna()]
    for claimed, frame in ((True, own), (False, unassigned)):
        for row in frame.itertuples(index=False):
            image_id = int(row.image_id)
            if image_id in session.paths and image_id not in skip and image_id not in seen:
                seen.add(image_id)
                candidates.append({"image_id": image_id, "queue_id": int(row.id), "claimed": claimed,
                                   "source": "queue", "strategy": _none_if_na(row.strategy),
                                   "score": _none_if_na(row.score), "model_round": _none_if_na(row.model_round)})
    unavailable = {int(i) for i in labels["image_id"]} | {int(i) for i in queue["image_id"]} | skip
    for image_id in sorted(set(session.paths) - unavailable):
        candidates.append({"image_id": image_id, "queue_id": None, "claimed": False, "source": "pool",
                           "strategy": None, "score": None, "model_round": None})
    session.candidates = candidates
    session.refreshed_at = time.monotonic()


def _take_batch(session: LabelingSession) -> list[dict[str, Any]]:
    """The next candidates this annotator may get, up to CLAIM_BATCH, ending early at one they already hold."""
    batch: list[dict[str, Any]] = []
    while session.candidates and len(batch) < CLAIM_BATCH:
        candidate = session.candidates.popleft()
        image_id = candidate["image_id"]
        if image_id in session.labeled or image_id in session.passed or image_id not in session.paths:
            continue
        batch.append(candidate)
        if candidate["claimed"]:
            break  # this annotator's own: nothing after it is needed
    return batch


def _unclaimed(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates of a batch to claim in the database (none when its first is the annotator's own already)."""
    return [] if not batch or batch[0]["claimed"] else [c for c in batch if not c["claimed"]]


def _claim_keys(candidates: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [("pool", c["image_id"]) if c["source"] == "pool" else ("queue", c["queue_id"]) for c in candidates]


def _settle(session: LabelingSession, batch: list[dict[str, Any]], tried: list[dict[str, Any]],
            got: tuple[int, int] | None) -> dict[str, Any] | None:
    """The batch's candidate this annotator now holds, given what the claim of `tried` returned; the candidates
    after it go back to the front of the snapshot, those before it are held by others. None when others hold all.
    An own claim can only be the batch's last (or its first, then nothing was tried)."""
    if batch[0]["claimed"]:
        position, chosen = 0, batch[0]
    elif got is not None:
        position, queue_id = got
        chosen = {**tried[position], "queue_id": queue_id, "claimed": True}
        if chosen["source"] == "pool":
            chosen["strategy"] = "pool-order"
        position = batch.index(tried[position])
    elif batch[-1]["claimed"]:
        position, chosen = len(batch) - 1, batch[-1]
    else:
        return None
    session.candidates.extendleft(reversed(batch[position + 1:]))
    return chosen


def _claim(session: LabelingSession, batch: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first candidate of the batch this annotator holds or can claim (claimed atomically, in one write for
    the whole batch); None when others hold them all. CxrAlError when the sign-in session is over."""
    tried = _unclaimed(batch)
    got = session.project.db.claim_first(_claim_keys(tried), session.annotator, session=session.session_key) \
        if tried else None
    return _settle(session, batch, tried, got)


def _shown_entry(session: LabelingSession, claimed: dict[str, Any]) -> dict[str, Any]:
    """What current_image returns for a claimed candidate."""
    from_pool = claimed["source"] == "pool"
    remaining = 1 + sum(1 for c in session.candidates if (c["source"] == "pool") == from_pool)
    return {**claimed, "path": session.paths[claimed["image_id"]], "remaining": remaining,
            "shown_at": time.monotonic()}


def _next_image(session: LabelingSession) -> dict[str, Any] | None:
    refreshed = False
    if time.monotonic() - session.refreshed_at > SNAPSHOT_TTL_S:
        _refresh(session)
        refreshed = True
    while True:
        batch = _take_batch(session)
        if not batch:
            if refreshed:
                return None
            _refresh(session)
            refreshed = True
            continue
        claimed = _claim(session, batch)
        if claimed is not None:
            return _shown_entry(session, claimed)

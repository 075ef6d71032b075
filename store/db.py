"""The project database (DuckDB): schema, migrations and every SQL statement of the project.

DuckDB lets one process hold the file at a time, and several processes share a project (the
app, a lead's `cxr-al status`, a training child), so a connection is opened for one operation
and closed at once. A process that finds the file held retries for a while, then raises
ProjectBusyError. Writes happen in one transaction; a call returns only after its commit.

Experimental, off unless `CXR_AL_DB_LINGER_S` is set (seconds, e.g. 10, in the environment of
`cxr-al serve`): opening the file costs ~18 ms of CPU and the first statements on a fresh instance
read cold pages, together about half the app server's CPU per key press, so a process with the
setting keeps its connection while it is busy and closes it after that many idle seconds. It gives
the file up when another process asks: a process that finds the file held touches
`<database>.wanted`, and a lingering process that sees it closes its connection within REAP_EVERY_S
and, for YIELD_S, closes after every operation again. Off by default: with it on, two of three runs
of the browser tests lost a first key press after sign-in (no label saved, none acknowledged), and
the cause is not found.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from store.errors import CxrAlError, ProjectBusyError

SCHEMA_VERSION = 4
DEFAULT_BUSY_TIMEOUT_S = 15.0

# Forward migrations: MIGRATIONS[v] takes a database at version v-1 to version v.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
        "CREATE SEQUENCE seq_images START 1",
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY DEFAULT nextval('seq_images'),
            path VARCHAR NOT NULL UNIQUE,
            sha256 VARCHAR NOT NULL UNIQUE,
            size_bytes BIGINT,
            width INTEGER,
            height INTEGER,
            format VARCHAR,
            modality VARCHAR,
            split VARCHAR NOT NULL DEFAULT 'pool' CHECK (split IN ('pool', 'test')),
            added_at TIMESTAMP NOT NULL)""",
        # hidden ground truth for oracle simulation and test metrics; never shown to annotators
        "CREATE TABLE oracle (image_id INTEGER PRIMARY KEY, label VARCHAR NOT NULL)",
        "CREATE TABLE skipped (path VARCHAR, reason VARCHAR, skipped_at TIMESTAMP)",
        """CREATE TABLE annotators (
            name VARCHAR PRIMARY KEY,
            role VARCHAR NOT NULL DEFAULT 'annotator',
            password_hash VARCHAR,
            created_at TIMESTAMP NOT NULL)""",
        "CREATE SEQUENCE seq_labels START 1",
        """CREATE TABLE labels (
            id BIGINT PRIMARY KEY DEFAULT nextval('seq_labels'),
            image_id INTEGER NOT NULL,
            label VARCHAR NOT NULL,
            annotator VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            round_id INTEGER,
            seconds_spent DOUBLE,
            source VARCHAR,
            superseded_by BIGINT,
            superseded_at TIMESTAMP)""",
        "CREATE SEQUENCE seq_rounds START 1",
        """CREATE TABLE rounds (
            id INTEGER PRIMARY KEY DEFAULT nextval('seq_rounds'),
            kind VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            n_labels INTEGER,
            params VARCHAR,
            checkpoint VARCHAR,
            metrics VARCHAR,
            error VARCHAR)""",
        """CREATE TABLE predictions (
            round_id INTEGER NOT NULL,
            image_id INTEGER NOT NULL,
            probs FLOAT[] NOT NULL)""",
        "CREATE SEQUENCE seq_queue START 1",
        """CREATE TABLE queue (
            id BIGINT PRIMARY KEY DEFAULT nextval('seq_queue'),
            image_id INTEGER NOT NULL,
            annotator VARCHAR,
            strategy VARCHAR,
            score DOUBLE,
            model_round INTEGER,
            rank INTEGER,
            created_at TIMESTAMP NOT NULL,
            status VARCHAR NOT NULL DEFAULT 'open',
            closed_at TIMESTAMP)""",
        "CREATE SEQUENCE seq_events START 1",
        """CREATE TABLE events (
            id BIGINT PRIMARY KEY DEFAULT nextval('seq_events'),
            logged_at TIMESTAMP NOT NULL,
            actor VARCHAR,
            kind VARCHAR NOT NULL,
            payload VARCHAR)""",
    ],
}


# v2 changes no table: it rewrites recorded artifact paths relative to the project root (_relative_paths).
MIGRATIONS[2] = []

# v3: who and what an image belongs to. patient_key is a keyed pseudonym of the patient (never the raw
# PatientID: see ProjectDB.secret); study/series/SOP instance UIDs are kept as read, for PACS round trips.
MIGRATIONS[3] = [
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS patient_key VARCHAR",
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS study_uid VARCHAR",
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS series_uid VARCHAR",
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS sop_uid VARCHAR",
]
IMAGE_IDENTIFIER_COLUMNS = ("patient_key", "study_uid", "series_uid", "sop_uid")

# v4: access. A server-side record per sign-in (sessions, keyed by the SHA-256 of the browser's secret token), accounts
# that can be disabled and that remember when their password changed (sessions begun before are over), failed sign-ins
# counted per subject (a keyed hash of the name tried, or the client address) for throttling and lockout, and the
# sign-in session that claimed a queue entry (its claims go back to the queue when it ends). Idempotent (IF NOT
# EXISTS): a database set back to an older version migrates forward again.
MIGRATIONS[4] = [
    "ALTER TABLE annotators ADD COLUMN IF NOT EXISTS disabled_at TIMESTAMP",
    "ALTER TABLE annotators ADD COLUMN IF NOT EXISTS credentials_changed_at TIMESTAMP",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_hash VARCHAR PRIMARY KEY,
        annotator VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL,
        last_seen TIMESTAMP NOT NULL,
        idle_s INTEGER NOT NULL,
        idle_expires_at TIMESTAMP NOT NULL,
        expires_at TIMESTAMP NOT NULL,
        ended_at TIMESTAMP,
        end_reason VARCHAR,
        client VARCHAR)""",
    "CREATE TABLE IF NOT EXISTS signin_failures (subject VARCHAR NOT NULL, failed_at TIMESTAMP NOT NULL)",
    "ALTER TABLE queue ADD COLUMN IF NOT EXISTS claim_session VARCHAR",
]

SESSIONS_KEPT_DAYS = 30  # ended sign-in sessions are kept this long (who was signed in when), then deleted

# Why a sign-in session is over, or NULL while it is live ($now: the time of the check). One expression for the
# per-page check, the sweep, claims and labels, so they never disagree.
_SESSION_END_REASON = """CASE
    WHEN s.ended_at IS NOT NULL THEN coalesce(s.end_reason, 'ended')
    WHEN a.name IS NULL THEN 'account removed'
    WHEN a.disabled_at IS NOT NULL THEN 'account disabled'
    WHEN a.credentials_changed_at > s.created_at THEN 'password changed'
    WHEN s.expires_at <= $now THEN 'expired'
    WHEN s.idle_expires_at <= $now THEN 'idle'
    ELSE NULL END"""
TEST_SPLIT_SOURCE = "test-split"  # labels.source of a label given to a held-out test image on explicit request


def relative_artifact_path(recorded: str | None, root: Path) -> str | None:
    """A recorded artifact path made relative to the project root: absolute ones inside the root lose the
    root; relative ones written against some other working folder keep their part from `artifacts/` on,
    when that file is in this project. Anything else is returned unchanged."""
    if not recorded:
        return recorded
    root = root.resolve()
    path = Path(recorded)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    elif (root / path).exists():
        return path.as_posix()
    parts = path.parts
    if "artifacts" in parts:
        tail = Path(*parts[parts.index("artifacts"):])
        if (root / tail).exists():
            return tail.as_posix()
    return recorded


def utcnow() -> datetime:
    """Naive UTC timestamp, the form every TIMESTAMP column holds."""
    return datetime.now(UTC).replace(tzinfo=None)


# One lock per database file per process: threads of one process (the app serves every browser
# session from a thread) must not attach the same file at once, which DuckDB refuses with a
# 'Unique file handle conflict' rather than a lock error. Other processes wait on the file lock.
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(key: str) -> threading.RLock:
    """The lock of one database file in this process; key: the file's resolved path."""
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.RLock())


# ----------------------------------------------------------------------------- lingering connections (app server)
LINGER_ENV = "CXR_AL_DB_LINGER_S"  # seconds a process keeps its connection after the last operation; unset/0: none
WANTED_SUFFIX = ".wanted"  # touched by a process that found the file held: lingering holders let go
REAP_EVERY_S = 0.05  # how often a lingering process checks for idleness and for others waiting
YIELD_S = 1.0  # after giving the file up, connections are closed after every operation for this long


class _Lingering:
    """A process's kept connection to one database file (used under that file's thread lock)."""

    __slots__ = ("con", "pid", "opened_ns", "last_used", "busy")

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con, self.pid, self.opened_ns = con, os.getpid(), time.time_ns()
        self.last_used, self.busy = time.monotonic(), False


_LINGERING: dict[str, _Lingering] = {}
_YIELD_UNTIL: dict[str, float] = {}
_REAPER: list[threading.Thread] = []


def linger_seconds() -> float:
    """How long this process keeps an idle connection (CXR_AL_DB_LINGER_S; 0 = close after every operation)."""
    try:
        return max(0.0, float(os.environ.get(LINGER_ENV) or 0.0))
    except ValueError:
        return 0.0


def _wanted_path(path: Path) -> Path:
    return path.with_name(path.name + WANTED_SUFFIX)


def _ask_for(path: Path) -> None:
    """Tell a process that keeps the file open that this one is waiting for it."""
    wanted = _wanted_path(path)
    try:
        os.close(os.open(wanted, os.O_CREAT | os.O_WRONLY, 0o600))
        os.utime(wanted)
    except OSError:
        pass  # a read-only folder: the holder still lets go when idle


def _wanted_since(path: Path, since_ns: int) -> bool:
    try:
        return os.stat(_wanted_path(path)).st_mtime_ns >= since_ns
    except OSError:
        return False


def _let_go(key: str, *, yielding: bool) -> None:
    """Close the kept connection of one file (caller holds its thread lock)."""
    kept = _LINGERING.pop(key, None)
    if yielding:
        _YIELD_UNTIL[key] = time.monotonic() + YIELD_S
    if kept is not None and kept.pid == os.getpid():
        try:
            kept.con.close()
        except Exception:  # noqa: BLE001 - closing is best effort; the connection is forgotten either way
            pass


def _reap() -> None:
    """Background thread of a lingering process: close kept connections that idle or that another process wants."""
    while True:
        time.sleep(REAP_EVERY_S)
        for key, kept in list(_LINGERING.items()):
            lock = _THREAD_LOCKS.get(key)
            if lock is None or not lock.acquire(blocking=False):
                continue  # in use right now: the operation's end checks again
            try:
                if _LINGERING.get(key) is not kept or kept.busy:
                    continue
                wanted = _wanted_since(Path(key), kept.opened_ns)
                if wanted or time.monotonic() - kept.last_used > linger_seconds():
                    _let_go(key, yielding=wanted)
            except Exception:  # noqa: BLE001 - the reaper must outlive any one failure, or the file stays held
                _LINGERING.pop(key, None)
            finally:
                lock.release()


def _start_reaper() -> None:
    with _THREAD_LOCKS_GUARD:
        if not _REAPER or not _REAPER[0].is_alive():
            _REAPER[:] = [threading.Thread(target=_reap, name="cxr-al-db-reaper", daemon=True)]
            _REAPER[0].start()


def close_lingering() -> None:
    """Close every connection this process keeps (at exit: DuckDB checkpoints its log into the file)."""
    for key in list(_LINGERING):
        lock = _THREAD_LOCKS.get(key)
        if lock is not None and lock.acquire(timeout=5):
            try:
                _let_go(key, yielding=False)
            finally:
                lock.release()


atexit.register(close_lingering)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "being used by another process" in text


class ProjectDB:
    """Named operations on one project's DuckDB file; each opens and closes its own connection."""

    def __init__(self, path: Path | str, busy_timeout: float | None = None):
        self.path = Path(path)
        env = os.environ.get("CXR_AL_BUSY_TIMEOUT")
        self.busy_timeout = busy_timeout if busy_timeout is not None else float(env or DEFAULT_BUSY_TIMEOUT_S)

    # ----------------------------------------------------------------- connections
    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise CxrAlError(f"cannot open project database {self.path}: {exc}") from exc
                _ask_for(self.path)  # a process that keeps the file open (the app server) lets go
                if time.monotonic() >= deadline:
                    raise ProjectBusyError(
                        f"project is busy: another process has held {self.path} for more than "
                        f"{self.busy_timeout:.0f} s; try again when it is done "
                        "(or raise CXR_AL_BUSY_TIMEOUT)") from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 1.6, 0.5)

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation, under the file's thread lock: this process's kept one when it lingers
        (see the module docstring), else a new one closed on exit. A failed operation drops a kept connection."""
        key = str(self.path.resolve())
        with _thread_lock(key):
            kept = _LINGERING.get(key)
            if kept is not None and (kept.pid != os.getpid() or _wanted_since(self.path, kept.opened_ns)):
                _let_go(key, yielding=kept.pid == os.getpid())
                kept = None
            linger = linger_seconds()
            if kept is None and linger > 0 and time.monotonic() >= _YIELD_UNTIL.get(key, 0.0):
                kept = _LINGERING[key] = _Lingering(self._open())
                _start_reaper()
            if kept is None or kept.busy:  # not lingering, or nested in this thread's own operation
                con = self._open() if kept is None else kept.con.cursor()
                try:
                    yield con
                finally:
                    con.close()
                return
            kept.busy = True
            try:
                yield kept.con
            except BaseException:
                _let_go(key, yielding=False)
                raise
            finally:
                kept.busy = False
                kept.last_used = time.monotonic()
            if linger <= 0:
                _let_go(key, yielding=False)

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for reading."""
        if not self.path.exists():
            raise CxrAlError(f"no project database at {self.path} (run `cxr-al init` first)")
        with self._connection() as con:
            yield con

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: committed on success, rolled back on any error."""
        if not self.path.exists():
            raise CxrAlError(f"no project database at {self.path} (run `cxr-al init` first)")
        with self._connection() as con:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    # ----------------------------------------------------------------- schema
    def create(self) -> None:
        """Create a new database at the current schema version; refuses to touch an existing file."""
        if self.path.exists():
            raise CxrAlError(f"{self.path} already exists; refusing to overwrite a project")
        con = duckdb.connect(str(self.path))
        try:
            con.begin()
            self._migrate(con, 0)
            con.commit()
        except BaseException:
            con.close()
            for leftover in (self.path, self.path.with_name(self.path.name + ".wal")):
                leftover.unlink(missing_ok=True)
            raise
        con.close()

    def schema_version(self) -> int:
        with self.read() as con:
            return int(con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    def migrate(self, root: Path | None = None) -> int:
        """Bring an older database forward to SCHEMA_VERSION (a read when it is current already); returns the
        version it ends at. `root`: the project folder, for v2's rewrite of recorded artifact paths."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise CxrAlError(f"project schema v{current} is newer than this CXR-AL (v{SCHEMA_VERSION}); upgrade CXR-AL")
        if current == SCHEMA_VERSION:
            return current
        with self.write() as con:
            current = int(con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
            self._migrate(con, current)
            if current < 2:
                root = self.path.parent if root is None else Path(root)
                rows = con.execute("SELECT id, checkpoint FROM rounds WHERE checkpoint IS NOT NULL").fetchall()
                con.executemany("UPDATE rounds SET checkpoint = ? WHERE id = ?",
                                [(relative_artifact_path(ckpt, root), rid) for rid, ckpt in rows])
        return SCHEMA_VERSION

    @staticmethod
    def _migrate(con: duckdb.DuckDBPyConnection, current: int) -> None:
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for stmt in MIGRATIONS[version]:
                con.execute(stmt)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(version)])

    @staticmethod
    def _log(con: duckdb.DuckDBPyConnection, kind: str, actor: str | None, payload: dict[str, Any]) -> None:
        con.execute("INSERT INTO events (logged_at, actor, kind, payload) VALUES (?, ?, ?, ?)",
                    [utcnow(), actor, kind, json.dumps(payload, default=str)])

    def secret(self, name: str) -> bytes:
        """A random 32-byte project secret kept in the database under a name (created on first use): the key
        for pseudonyms of patient identifiers and for hashing unknown sign-in names, so they cannot be
        reversed by guessing without the project file."""
        key = f"secret:{name}"
        with self.read() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        if row is not None:
            return bytes.fromhex(row[0])
        with self.write() as con:
            con.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", [key, os.urandom(32).hex()])
            (value,) = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return bytes.fromhex(value)

    def log_event(self, kind: str, actor: str | None = None, **payload: Any) -> None:
        """Append one entry to the event log (sign-ins, exports, configuration changes ...)."""
        with self.write() as con:
            self._log(con, kind, actor, payload)

    def events(self, kind: str | None = None, limit: int = 1000) -> pd.DataFrame:
        with self.read() as con:
            sql = "SELECT * FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY id DESC LIMIT ?"
            return con.execute(sql, ([kind] if kind else []) + [limit]).df()

    # ----------------------------------------------------------------- images
    def known_paths_and_hashes(self) -> tuple[set[str], set[str]]:
        """Paths and content hashes already in the project, to skip them on re-ingest."""
        with self.read() as con:
            rows = con.execute("SELECT path, sha256 FROM images").fetchall()
        return {r[0] for r in rows}, {r[1] for r in rows}

    def known_sop_uids(self) -> set[str]:
        """SOP Instance UIDs of the DICOM images already in the project, so a PACS ingest fetches each once."""
        with self.read() as con:
            rows = con.execute("SELECT sop_uid FROM images WHERE sop_uid IS NOT NULL").fetchall()
        return {r[0] for r in rows}

    def add_images(self, rows: Sequence[dict[str, Any]], oracle: Sequence[tuple[str, str]] = (),
                   labels: Sequence[tuple[str, str]] = (), skipped: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
        """Insert images (dicts with path, sha256, size_bytes, width, height, format, modality, split),
        plus ground truth or imported labels keyed by path, in one transaction; returns path -> id."""
        now = utcnow()
        with self.write() as con:
            ids = self._insert_images(con, rows, oracle, labels, now)
            if skipped:
                con.executemany("INSERT INTO skipped VALUES (?, ?, ?)", [(p, why, now) for p, why in skipped])
            if rows or skipped:
                self._log(con, "ingest", None, {"added": len(rows), "skipped": len(skipped),
                                                "oracle": len(oracle), "labels": len(labels)})
        return ids

    def add_ingest_batch(self, rows: Sequence[dict[str, Any]], oracle: Sequence[tuple[str, str]] = (),
                         labels: Sequence[tuple[str, str]] = (),
                         skipped: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
        """One commit of an ingest in progress: images as in add_images, and the files skipped since the last
        commit. A path keeps one skipped row, its latest reason (a re-run does not count it again), and loses
        it once the file is ingested. No event: the ingest logs one for the whole run. Returns path -> id."""
        now = utcnow()
        with self.write() as con:
            ids = self._insert_images(con, rows, oracle, labels, now)
            settled = [(r["path"],) for r in rows] + [(p,) for p, _ in skipped]
            if settled:
                con.executemany("DELETE FROM skipped WHERE path = ?", settled)
            if skipped:
                con.executemany("INSERT INTO skipped VALUES (?, ?, ?)", [(p, why, now) for p, why in skipped])
        return ids

    def settle_skipped(self, folder: str, still_skipped: Sequence[str]) -> int:
        """After a complete ingest of `folder`: forget the earlier skips of paths below it that this run did not
        skip (fixed, removed, or a link now followed), so the skipped table says what is wrong there now.
        Returns how many rows went."""
        prefix = folder.rstrip("/") + "/"
        with self.write() as con:
            (n,) = con.execute(
                """SELECT COUNT(*) FROM skipped WHERE (path = ? OR starts_with(path, ?))
                   AND path NOT IN (SELECT unnest(?::VARCHAR[]))""", [folder, prefix, list(still_skipped)]).fetchone()
            con.execute("""DELETE FROM skipped WHERE (path = ? OR starts_with(path, ?))
                           AND path NOT IN (SELECT unnest(?::VARCHAR[]))""", [folder, prefix, list(still_skipped)])
        return int(n)

    @staticmethod
    def _insert_images(con: duckdb.DuckDBPyConnection, rows: Sequence[dict[str, Any]],
                       oracle: Sequence[tuple[str, str]], labels: Sequence[tuple[str, str]],
                       now: datetime) -> dict[str, int]:
        ids: dict[str, int] = {}
        for r in rows:
            (image_id,) = con.execute(
                """INSERT INTO images (path, sha256, size_bytes, width, height, format, modality, split, added_at,
                                        patient_key, study_uid, series_uid, sop_uid)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                [r["path"], r["sha256"], r["size_bytes"], r["width"], r["height"], r["format"],
                 r["modality"], r["split"], now] + [r.get(c) for c in IMAGE_IDENTIFIER_COLUMNS]).fetchone()
            ids[r["path"]] = int(image_id)
        if oracle:
            con.executemany("INSERT INTO oracle VALUES (?, ?)", [(ids[p], lab) for p, lab in oracle])
        if labels:
            con.execute("INSERT OR IGNORE INTO annotators (name, role, created_at) VALUES ('import', 'system', ?)", [now])
            con.executemany(
                "INSERT INTO labels (image_id, label, annotator, created_at, round_id, source) VALUES (?, ?, 'import', ?, 0, 'import')",
                [(ids[p], lab, now) for p, lab in labels])
        return ids

    def images(self, split: str | None = None) -> pd.DataFrame:
        """All images (id, path, sha256, split, ...), ordered by id."""
        with self.read() as con:
            if split:
                return con.execute("SELECT * FROM images WHERE split = ? ORDER BY id", [split]).df()
            return con.execute("SELECT * FROM images ORDER BY id").df()

    def image_groups(self) -> pd.DataFrame:
        """Who every image belongs to (id, path, split, patient_key, study_uid), ordered by id: for the grouped
        test split, the grouping in `status` and the leakage check."""
        with self.read() as con:
            return con.execute("SELECT id, path, split, patient_key, study_uid FROM images ORDER BY id").df()

    def image(self, image_id: int) -> dict[str, Any]:
        """One image's row; CxrAlError when the id is unknown."""
        with self.read() as con:
            cur = con.execute("SELECT * FROM images WHERE id = ?", [int(image_id)])
            row = cur.fetchone()
            if row is None:
                raise CxrAlError(f"no image with id {image_id} in this project")
            return dict(zip([d[0] for d in cur.description], row, strict=True))

    def oracle_labels(self) -> pd.DataFrame:
        """Hidden ground truth (image_id, label) for simulation and test metrics."""
        with self.read() as con:
            return con.execute("SELECT image_id, label FROM oracle ORDER BY image_id").df()

    def skipped(self) -> pd.DataFrame:
        with self.read() as con:
            return con.execute("SELECT * FROM skipped ORDER BY skipped_at, path").df()

    # ----------------------------------------------------------------- access stamp
    @property
    def _access_stamp_path(self) -> Path:
        return self.path.with_name(self.path.name + ".access")

    def access_stamp(self) -> int:
        """A number that changes (after the commit) whenever an account or a sign-in session changes in any process:
        role, password, disabled, sessions ended. A file's mtime, so checking it costs a stat, not a database read:
        the app keeps checked sessions while it is unchanged (active.views.sessions)."""
        try:
            return self._access_stamp_path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def _bump_access_stamp(self) -> None:
        stamp = self._access_stamp_path
        now = time.time_ns()
        stamp.touch(exist_ok=True)
        os.utime(stamp, ns=(now, max(now, self.access_stamp() + 1)))

    # ----------------------------------------------------------------- annotators
    def upsert_annotator(self, name: str, role: str = "annotator", password_hash: str | None = None,
                         actor: str | None = None, *, password_changed: bool = False) -> None:
        """Create an account, or update its role and password when it exists (logged with who did it).
        password_changed: the password is a new one, so the account's sign-in sessions end (its claims return)."""
        now = utcnow()
        with self.write() as con:
            con.execute(
                """INSERT INTO annotators (name, role, password_hash, created_at, credentials_changed_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET role = excluded.role,
                   password_hash = COALESCE(excluded.password_hash, annotators.password_hash),
                   credentials_changed_at = COALESCE(excluded.credentials_changed_at, annotators.credentials_changed_at)""",
                [name, role, password_hash, now, now if password_changed else None])
            if password_changed:
                self._end_sessions(con, now, "password changed", annotator=name)
            self._log(con, "account", actor, {"name": name, "role": role, "password_changed": password_changed})
        self._bump_access_stamp()

    def set_annotator_disabled(self, name: str, disabled: bool, actor: str | None = None) -> bool:
        """Disable a sign-in account (its sessions end at once, its claims return) or enable it again; False when
        there is no such account."""
        now = utcnow()
        with self.write() as con:
            found = con.execute(
                """UPDATE annotators SET disabled_at = CASE WHEN ? THEN coalesce(disabled_at, ?) ELSE NULL END
                   WHERE name = ? AND role <> 'system' RETURNING name""", [disabled, now, name]).fetchall()
            if not found:
                return False
            if disabled:
                self._end_sessions(con, now, "account disabled", annotator=name)
            self._log(con, "account_disabled" if disabled else "account_enabled", actor, {"name": name})
        self._bump_access_stamp()
        return True

    def annotator(self, name: str) -> dict[str, Any] | None:
        with self.read() as con:
            cur = con.execute("SELECT * FROM annotators WHERE name = ?", [name])
            row = cur.fetchone()
            return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def annotators(self) -> pd.DataFrame:
        with self.read() as con:
            return con.execute("SELECT name, role, created_at, disabled_at FROM annotators ORDER BY name").df()

    # ----------------------------------------------------------------- sign-in sessions
    def start_session(self, token_hash: str, annotator: str, *, idle_s: int, max_s: int,
                      client: str | None = None) -> None:
        """Record a sign-in session (keyed by the hash of the browser's token), live for idle_s seconds after each
        sign of life and max_s seconds at most; sessions found over meanwhile are ended and their claims return."""
        now = utcnow()
        with self.write() as con:
            con.execute(
                """INSERT INTO sessions (token_hash, annotator, created_at, last_seen, idle_s, idle_expires_at,
                                         expires_at, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                [token_hash, annotator, now, now, int(idle_s), now + timedelta(seconds=int(idle_s)),
                 now + timedelta(seconds=int(max_s)), client])
            self._end_stale_sessions(con, now)

    def session(self, token_hash: str) -> dict[str, Any] | None:
        """A sign-in session with its account's current role and `end_reason` (None while it is live: not ended,
        not idle or past its expiry, the account enabled and its password unchanged since); None when unknown.
        One indexed read: every page run checks its session with it."""
        with self.read() as con:
            cur = con.execute(
                f"""SELECT s.token_hash, s.annotator, a.role, s.created_at, s.last_seen, s.idle_s, s.idle_expires_at,
                           s.expires_at, s.ended_at, {_SESSION_END_REASON} AS end_reason
                    FROM sessions s LEFT JOIN annotators a ON a.name = s.annotator
                    WHERE s.token_hash = $session""", {"session": token_hash, "now": utcnow()})
            row = cur.fetchone()
            return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def touch_session(self, token_hash: str) -> None:
        """A sign of life: the session's idle limit starts again from now."""
        now = utcnow()
        with self.write() as con:
            con.execute("""UPDATE sessions SET last_seen = ?, idle_expires_at = ? + to_seconds(idle_s)
                           WHERE token_hash = ? AND ended_at IS NULL""", [now, now, token_hash])

    def end_sessions(self, reason: str, *, token_hash: str | None = None, annotator: str | None = None,
                     actor: str | None = None) -> int:
        """End one session (token_hash), an account's sessions (annotator) or, with neither, every session; their
        claims return to the queue. Returns how many were live."""
        now = utcnow()
        with self.write() as con:
            n = self._end_sessions(con, now, reason, token_hash=token_hash, annotator=annotator)
            if actor is not None:
                self._log(con, "sessions_ended", actor, {"annotator": annotator, "reason": reason, "n": n})
        self._bump_access_stamp()
        return n

    def end_stale_sessions(self) -> int:
        """End the sessions that are over but not yet marked (idle, expired, account disabled, password changed) and
        return their claims to the queue; returns how many claims went back."""
        with self.write() as con:
            return self._end_stale_sessions(con, utcnow())

    def sessions(self) -> pd.DataFrame:
        """The live sign-in sessions, newest first (no token hashes)."""
        now = utcnow()
        with self.read() as con:
            return con.execute(
                f"""SELECT s.annotator, a.role, s.created_at, s.last_seen, s.idle_expires_at AS idle_until,
                           s.expires_at, s.client
                    FROM sessions s LEFT JOIN annotators a ON a.name = s.annotator
                    WHERE ({_SESSION_END_REASON}) IS NULL ORDER BY s.created_at DESC""", {"now": now}).df()

    @classmethod
    def _end_sessions(cls, con: duckdb.DuckDBPyConnection, now: datetime, reason: str, *,
                      token_hash: str | None = None, annotator: str | None = None) -> int:
        ended = con.execute(
            """UPDATE sessions SET ended_at = $now, end_reason = $reason
               WHERE ended_at IS NULL AND ($session::VARCHAR IS NULL OR token_hash = $session)
                 AND ($annotator::VARCHAR IS NULL OR annotator = $annotator) RETURNING 1""",
            {"now": now, "reason": reason, "session": token_hash, "annotator": annotator}).fetchall()
        cls._release_claims(con)
        return len(ended)

    @classmethod
    def _end_stale_sessions(cls, con: duckdb.DuckDBPyConnection, now: datetime) -> int:
        stale = con.execute(
            f"""SELECT s.token_hash, {_SESSION_END_REASON} AS reason
                FROM sessions s LEFT JOIN annotators a ON a.name = s.annotator
                WHERE s.ended_at IS NULL AND ({_SESSION_END_REASON}) IS NOT NULL""", {"now": now}).fetchall()
        if stale:
            con.executemany("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE token_hash = ?",
                            [(now, reason, token) for token, reason in stale])
        con.execute("DELETE FROM sessions WHERE ended_at < ?", [now - timedelta(days=SESSIONS_KEPT_DAYS)])
        return cls._release_claims(con)

    @classmethod
    def _release_claims(cls, con: duckdb.DuckDBPyConnection) -> int:
        """Open queue entries claimed by sessions that have ended (or are gone) go back to the queue, unassigned."""
        released = con.execute(
            """UPDATE queue SET annotator = NULL, claim_session = NULL
               WHERE status = 'open' AND claim_session IS NOT NULL
                 AND claim_session NOT IN (SELECT token_hash FROM sessions WHERE ended_at IS NULL)
               RETURNING id, image_id""").fetchall()
        if released:
            cls._log(con, "claims_released", None, {"queue_ids": sorted(int(r[0]) for r in released),
                                                    "image_ids": sorted(int(r[1]) for r in released)})
        return len(released)

    # ----------------------------------------------------------------- failed sign-ins
    def signin_failures(self, since: dict[str, datetime | None]) -> dict[str, tuple[int, datetime | None]]:
        """For each subject (a keyed hash of a name tried, or a client address): its failed sign-ins after the
        given time (all kept ones for None) and when the last was, in one query."""
        subjects = list(since)
        if not subjects:
            return {}
        with self.read() as con:
            rows = con.execute(
                """SELECT f.subject, count(*), max(f.failed_at) FROM signin_failures f
                   JOIN (SELECT unnest(?::VARCHAR[]) AS subject, unnest(?::TIMESTAMP[]) AS since) w
                     ON w.subject = f.subject AND (w.since IS NULL OR f.failed_at > w.since)
                   GROUP BY f.subject""", [subjects, [since[s] for s in subjects]]).fetchall()
        found = {r[0]: (int(r[1]), r[2]) for r in rows}
        return {s: found.get(s, (0, None)) for s in subjects}

    def record_signin_failure(self, subjects: Sequence[str], actor: str | None, keep_days: int = 30,
                              **payload: Any) -> None:
        """One failed sign-in: a row per subject it counts against, and a `signin_failed` event (actor: the account
        when it exists, else None: a name that is no account is never stored, the payload holds its keyed hash).
        Rows older than keep_days go."""
        now = utcnow()
        with self.write() as con:
            con.executemany("INSERT INTO signin_failures VALUES (?, ?)", [(s, now) for s in subjects])
            con.execute("DELETE FROM signin_failures WHERE failed_at < ?", [now - timedelta(days=keep_days)])
            self._log(con, "signin_failed", actor, payload)

    def clear_signin_failures(self, subject: str) -> int:
        """Forget a subject's failed sign-ins (a right password, or an admin's unlock); returns how many went."""
        with self.write() as con:
            gone = con.execute("DELETE FROM signin_failures WHERE subject = ? RETURNING 1", [subject]).fetchall()
        return len(gone)

    # ----------------------------------------------------------------- labels
    def add_label(self, image_id: int, label: str, annotator: str, *, seconds_spent: float | None = None,
                  source: str = "cli", queue_id: int | None = None, test_split: str = "allow",
                  session: str | None = None) -> int:
        """Record one label, superseding the same annotator's earlier label of that image; returns its id.

        Committed before it returns. Closes the annotator's open queue entry for the image. test_split says
        what a label of a test-split image does: 'allow' (recorded as given), 'refuse' (CxrAlError, nothing
        written) or 'mark' (recorded with source TEST_SPLIT_SOURCE, whatever `source` says). session: the
        sign-in session it is given in (refused with CxrAlError unless live and the annotator's; a sign of life).
        """
        now = utcnow()
        with self.write() as con:
            return self._insert_label(con, now, int(image_id), label, annotator, seconds_spent=seconds_spent,
                                      source=source, test_split=test_split, session=session)

    def add_label_then_claim(self, image_id: int, label: str, annotator: str, candidates: Sequence[tuple[str, int]],
                             *, seconds_spent: float | None = None, source: str = "ui", test_split: str = "refuse",
                             session: str | None = None) -> tuple[int, tuple[int, int] | None]:
        """add_label, then claim_first of the candidates for the same annotator, in one transaction: the key press
        that labels an image also takes the next one, at the cost of one connection. Returns (label id, what
        claim_first returns)."""
        now = utcnow()
        with self.write() as con:
            label_id = self._insert_label(con, now, int(image_id), label, annotator, seconds_spent=seconds_spent,
                                          source=source, test_split=test_split, session=session)
            return label_id, self._claim_first(con, now, candidates, annotator, session, "pool-order")

    @classmethod
    def _insert_label(cls, con: duckdb.DuckDBPyConnection, now: datetime, image_id: int, label: str, annotator: str,
                      *, seconds_spent: float | None, source: str, test_split: str, session: str | None) -> int:
        if session is not None:
            cls._live_session(con, session, annotator, now)
        row = con.execute("SELECT split FROM images WHERE id = ?", [int(image_id)]).fetchone()
        if row is None:
            raise CxrAlError(f"no image with id {image_id} in this project")
        if row[0] == "test" and test_split == "refuse":
            raise CxrAlError(f"image {image_id} is in the held-out test split: its labels do not train the "
                             "model and never replace its ground truth in test metrics; to record one anyway "
                             "(marked 'test-split'), ask explicitly: `cxr-al label ... --test-split`")
        if row[0] == "test" and test_split == "mark":
            source = TEST_SPLIT_SOURCE
        con.execute("INSERT OR IGNORE INTO annotators (name, role, created_at) VALUES (?, 'annotator', ?)",
                    [annotator, now])
        (round_id,) = con.execute(
            "SELECT COALESCE(MAX(id), 0) FROM rounds WHERE kind = 'train' AND status = 'done'").fetchone()
        (label_id,) = con.execute(
            """INSERT INTO labels (image_id, label, annotator, created_at, round_id, seconds_spent, source)
               VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id""",
            [int(image_id), label, annotator, now, round_id, seconds_spent, source]).fetchone()
        con.execute(
            """UPDATE labels SET superseded_by = ?, superseded_at = ?
               WHERE image_id = ? AND annotator = ? AND superseded_by IS NULL AND id <> ?""",
            [label_id, now, int(image_id), annotator, label_id])
        con.execute(
            """UPDATE queue SET status = 'done', closed_at = ?
               WHERE image_id = ? AND status = 'open' AND (annotator = ? OR annotator IS NULL)""",
            [now, int(image_id), annotator])
        cls._log(con, "label", annotator, {"image_id": int(image_id), "label": label,
                                            "label_id": int(label_id), "source": source})
        return int(label_id)

    @staticmethod
    def _live_session(con: duckdb.DuckDBPyConnection, session: str, annotator: str, now: datetime) -> None:
        """CxrAlError unless the sign-in session is live and the annotator's; then its idle limit starts again."""
        row = con.execute(f"""SELECT s.annotator, {_SESSION_END_REASON} FROM sessions s
                              LEFT JOIN annotators a ON a.name = s.annotator WHERE s.token_hash = $session""",
                          {"session": session, "now": now}).fetchone()
        reason = "unknown" if row is None else "another account's" if row[0] != annotator else row[1]
        if reason is not None:
            raise CxrAlError(f"your sign-in session has ended ({reason}): reload the page and sign in again")
        con.execute("UPDATE sessions SET last_seen = ?, idle_expires_at = ? + to_seconds(idle_s) WHERE token_hash = ?",
                    [now, now, session])

    def undo_last_label(self, annotator: str) -> dict[str, Any] | None:
        """Withdraw the annotator's most recent current label, restoring what it superseded."""
        now = utcnow()
        with self.write() as con:
            row = con.execute(
                """SELECT id, image_id, label FROM labels WHERE annotator = ? AND superseded_by IS NULL
                   AND source <> 'import' ORDER BY id DESC LIMIT 1""", [annotator]).fetchone()
            if row is None:
                return None
            label_id, image_id, label = row
            con.execute(
                """UPDATE labels SET superseded_by = NULL, superseded_at = NULL
                   WHERE id = (SELECT MAX(id) FROM labels WHERE superseded_by = ? AND id <> ?)""",
                [label_id, label_id])
            # withdrawn labels point at themselves: kept for the record, no longer current
            con.execute("UPDATE labels SET superseded_by = id, superseded_at = ? WHERE id = ?", [now, label_id])
            con.execute(
                """UPDATE queue SET status = 'open', closed_at = NULL WHERE id = (
                   SELECT MAX(id) FROM queue WHERE image_id = ? AND status = 'done'
                   AND (annotator = ? OR annotator IS NULL))""", [image_id, annotator])
            self._log(con, "undo", annotator, {"image_id": int(image_id), "label": label, "label_id": int(label_id)})
        return {"label_id": int(label_id), "image_id": int(image_id), "label": label}

    def current_labels(self) -> pd.DataFrame:
        """Every current (not superseded or withdrawn) label: one row per image and annotator."""
        with self.read() as con:
            return con.execute(
                """SELECT l.id AS label_id, l.image_id, l.label, l.annotator, l.created_at, l.round_id,
                          l.seconds_spent, l.source, i.split
                   FROM labels l JOIN images i ON i.id = l.image_id
                   WHERE l.superseded_by IS NULL ORDER BY l.id""").df()

    def label_origins(self) -> pd.DataFrame:
        """Every current label of a pool image with the suggestion that first brought it to an annotator:
        image_id, label, annotator, created_at, strategy (NULL when no queue entry led to it, e.g. imported
        labels) and model_round, both from the newest finished or unsure entry of that image that is not a
        second or double read (an image marked unsure keeps the strategy that picked it). What `auto`'s
        evidence and the efficiency view read."""
        with self.read() as con:
            return con.execute(
                """SELECT l.image_id, l.label, l.annotator, l.created_at, q.strategy, q.model_round
                   FROM labels l JOIN images i ON i.id = l.image_id
                   LEFT JOIN (SELECT image_id, strategy, model_round FROM queue
                              WHERE status IN ('done', 'unsure')
                                AND coalesce(strategy, '') NOT IN ('double-read', 'second-read')
                              QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY id DESC) = 1
                             ) q ON q.image_id = l.image_id
                   WHERE l.superseded_by IS NULL AND i.split = 'pool' ORDER BY l.id""").df()

    def count_labeled_since(self, since: Any = None, split: str = "pool") -> int:
        """Images of a split whose first current label came after `since` (every labeled one when None):
        what the round policy counts, in one query (it runs after every label)."""
        with self.read() as con:
            return int(con.execute(
                """SELECT count(*) FROM (
                       SELECT min(l.created_at) AS first FROM labels l JOIN images i ON i.id = l.image_id
                       WHERE l.superseded_by IS NULL AND i.split = ? GROUP BY l.image_id)
                   WHERE ?::TIMESTAMP IS NULL OR first > ?::TIMESTAMP""", [split, since, since]).fetchone()[0])

    def event_image_ids(self, kinds: Iterable[str], actor: str) -> set[int]:
        """Image ids named by the events of these kinds that `actor` logged (e.g. the images they skipped)."""
        kinds = list(kinds)
        with self.read() as con:
            rows = con.execute(
                f"""SELECT DISTINCT CAST(json_extract(payload, '$.image_id') AS BIGINT) FROM events
                    WHERE kind IN ({", ".join("?" * len(kinds))}) AND actor = ?
                    AND json_extract(payload, '$.image_id') IS NOT NULL""", [*kinds, actor]).fetchall()
        return {int(r[0]) for r in rows}

    def label_history(self, image_id: int | None = None) -> pd.DataFrame:
        """All labels ever given, superseded ones included (for audit and review)."""
        with self.read() as con:
            if image_id is None:
                return con.execute("SELECT * FROM labels ORDER BY id").df()
            return con.execute("SELECT * FROM labels WHERE image_id = ? ORDER BY id", [int(image_id)]).df()

    # ----------------------------------------------------------------- rounds and predictions
    def start_round(self, kind: str, params: dict[str, Any]) -> int:
        """Open a round (kind: pretrain | embed | train | simulate) and return its id."""
        with self.write() as con:
            (n_labels,) = con.execute(
                "SELECT COUNT(DISTINCT image_id) FROM labels WHERE superseded_by IS NULL").fetchone()
            (round_id,) = con.execute(
                """INSERT INTO rounds (kind, status, started_at, n_labels, params) VALUES (?, 'running', ?, ?, ?)
                   RETURNING id""", [kind, utcnow(), n_labels, json.dumps(params, default=str)]).fetchone()
            self._log(con, "round_start", None, {"round_id": int(round_id), "kind": kind})
        return int(round_id)

    def finish_round(self, round_id: int, *, checkpoint: str | None = None, metrics: dict[str, Any] | None = None,
                     predictions: pd.DataFrame | None = None) -> None:
        """Mark a round done and record its outputs (predictions: image_id + probs columns)."""
        with self.write() as con:
            con.execute("UPDATE rounds SET status = 'done', finished_at = ?, checkpoint = ?, metrics = ? WHERE id = ?",
                        [utcnow(), checkpoint, json.dumps(metrics or {}, default=float), int(round_id)])
            if predictions is not None and len(predictions):
                frame = pd.DataFrame({"round_id": int(round_id), "image_id": predictions["image_id"].astype("int32"),
                                      "probs": predictions["probs"]})
                con.register("new_predictions", frame)
                con.execute("INSERT INTO predictions SELECT round_id, image_id, probs::FLOAT[] FROM new_predictions")
                con.unregister("new_predictions")
            self._log(con, "round_done", None, {"round_id": int(round_id)})

    def fail_round(self, round_id: int, error: str) -> None:
        """Mark a round failed with its error; labels are never touched."""
        with self.write() as con:
            con.execute("UPDATE rounds SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                        [utcnow(), error[-4000:], int(round_id)])
            self._log(con, "round_failed", None, {"round_id": int(round_id), "error": error[-500:]})

    def rounds(self, kind: str | None = None) -> pd.DataFrame:
        """The rounds (of one kind), oldest first; params and metrics decoded to dicts (empty when none)."""
        with self.read() as con:
            sql = "SELECT * FROM rounds" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
            frame = con.execute(sql, [kind] if kind else []).df()
        for column in ("params", "metrics"):
            frame[column] = [json.loads(v) if isinstance(v, str) and v else {} for v in frame[column]]
        return frame

    def predictions(self, round_id: int, image_ids: Sequence[int] | None = None) -> pd.DataFrame:
        """A round's predictions (image_id, probs), of every image or only of image_ids."""
        with self.read() as con:
            if image_ids is None:
                return con.execute("SELECT image_id, probs FROM predictions WHERE round_id = ? ORDER BY image_id",
                                   [int(round_id)]).df()
            return con.execute("""SELECT image_id, probs FROM predictions
                                  WHERE round_id = ? AND list_contains(?, image_id) ORDER BY image_id""",
                               [int(round_id), [int(i) for i in image_ids]]).df()

    # ----------------------------------------------------------------- queue
    def add_to_queue(self, entries: Iterable[dict[str, Any]]) -> int:
        """Append suggestions (image_id, annotator, strategy, score, model_round, rank); returns how many were new."""
        now = utcnow()
        rows = [(int(e["image_id"]), e.get("annotator"), e.get("strategy"), float(e.get("score") or 0.0),
                 e.get("model_round"), int(e.get("rank", i)), now) for i, e in enumerate(entries)]
        added = 0
        with self.write() as con:
            for row in rows:  # an image waits in at most one queue: concurrent suggestions stay disjoint
                added += len(con.execute(
                    """INSERT INTO queue (image_id, annotator, strategy, score, model_round, rank, created_at)
                       SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (
                           SELECT 1 FROM queue WHERE image_id = ? AND status = 'open') RETURNING 1""",
                    [*row, row[0]]).fetchall())
        return added

    def open_queue(self, annotator: str | None = None) -> pd.DataFrame:
        """Open suggestions in order, for one annotator (their own plus unassigned) or for all."""
        with self.read() as con:
            if annotator is None:
                return con.execute("SELECT * FROM queue WHERE status = 'open' ORDER BY id").df()
            return con.execute(
                "SELECT * FROM queue WHERE status = 'open' AND (annotator = ? OR annotator IS NULL) ORDER BY id",
                [annotator]).df()

    def claim_first(self, candidates: Sequence[tuple[str, int]], annotator: str, session: str | None = None,
                    strategy: str = "pool-order") -> tuple[int, int] | None:
        """Claim the first of `candidates` nobody else holds, in one transaction: ("queue", queue id) takes an open
        unassigned suggestion, ("pool", image id) queues an image nobody has labeled or holds. Returns (its position
        in candidates, its queue id), or None when others hold them all. With several annotators walking the same
        suggestions, one write tries many candidates instead of one write (and a connection) per collision.
        session: the sign-in session claiming (CxrAlError, nothing claimed, when it is over; its idle limit starts
        again), and the claims return to the queue when it ends."""
        now = utcnow()
        with self.write() as con:
            if session is not None:
                self._live_session(con, session, annotator, now)
            return self._claim_first(con, now, candidates, annotator, session, strategy)

    @staticmethod
    def _claim_first(con: duckdb.DuckDBPyConnection, now: datetime, candidates: Sequence[tuple[str, int]],
                     annotator: str, session: str | None, strategy: str) -> tuple[int, int] | None:
        for position, (kind, ident) in enumerate(candidates):
            if kind == "queue":
                row = con.execute("""UPDATE queue SET annotator = ?, claim_session = ?
                                     WHERE id = ? AND status = 'open' AND annotator IS NULL RETURNING id""",
                                  [annotator, session, int(ident)]).fetchone()
            else:
                row = con.execute(
                    """INSERT INTO queue (image_id, annotator, strategy, score, model_round, rank, created_at,
                                          claim_session)
                       SELECT $image, $annotator, $strategy, 0.0, NULL, 0, $now, $session
                       WHERE NOT EXISTS (SELECT 1 FROM queue WHERE image_id = $image AND status = 'open')
                         AND NOT EXISTS (SELECT 1 FROM labels WHERE image_id = $image AND superseded_by IS NULL)
                       RETURNING id""",
                    {"image": int(ident), "annotator": annotator, "strategy": strategy, "now": now,
                     "session": session}).fetchone()
            if row is not None:
                return position, int(row[0])
        return None

    def close_queue_entries(self, ids: Sequence[int], status: str) -> None:
        """Close suggestions as skipped, expired or unsure."""
        with self.write() as con:
            con.executemany("UPDATE queue SET status = ?, closed_at = ? WHERE id = ? AND status = 'open'",
                            [(status, utcnow(), int(i)) for i in ids])

    # ----------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """Counts for `cxr-al status`: images, labels per class, annotators, rounds, queue, skipped files."""
        with self.read() as con:
            splits = dict(con.execute("SELECT split, COUNT(*) FROM images GROUP BY split").fetchall())
            per_class = dict(con.execute(
                """SELECT label, COUNT(*) FROM labels WHERE superseded_by IS NULL GROUP BY label ORDER BY label"""
            ).fetchall())
            (labeled_images,) = con.execute(
                "SELECT COUNT(DISTINCT image_id) FROM labels WHERE superseded_by IS NULL").fetchone()
            (n_labels,) = con.execute("SELECT COUNT(*) FROM labels WHERE superseded_by IS NULL").fetchone()
            per_annotator = dict(con.execute(
                "SELECT annotator, COUNT(*) FROM labels WHERE superseded_by IS NULL GROUP BY annotator ORDER BY annotator"
            ).fetchall())
            (n_oracle,) = con.execute("SELECT COUNT(*) FROM oracle").fetchone()
            (n_skipped,) = con.execute("SELECT COUNT(*) FROM skipped").fetchone()
            skipped_reasons = dict(con.execute(
                "SELECT split_part(reason, ':', 1), COUNT(*) FROM skipped GROUP BY 1 ORDER BY 1").fetchall())
            (n_queue,) = con.execute("SELECT COUNT(*) FROM queue WHERE status = 'open'").fetchone()
        return {
            "images": {"total": int(sum(splits.values())), "pool": int(splits.get("pool", 0)),
                       "test": int(splits.get("test", 0))},
            "skipped": int(n_skipped),
            "skipped_reasons": {k: int(v) for k, v in skipped_reasons.items()},
            "labels": int(labeled_images),
            "label_records": int(n_labels),
            "labels_per_class": {k: int(v) for k, v in per_class.items()},
            "labels_per_annotator": {k: int(v) for k, v in per_annotator.items()},
            "oracle_labels": int(n_oracle),
            "queue": int(n_queue),
        }

"""The app server's lingering database connection (store.db, CXR_AL_DB_LINGER_S): it keeps the file while busy, gives
it up when another process asks, loses no acknowledged write when killed, and changes nothing for other processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from store import db as dbmod
from store.db import LINGER_ENV, ProjectDB
from store.errors import CxrAlError

REPO = Path(__file__).resolve().parents[2]

# A process that keeps the file: it logs one event per line read on stdin ("N" -> event number N) and answers
# "ok N" only after the write has committed; with the linger set it keeps its connection between lines.
HOLDER = textwrap.dedent("""
    import sys
    from store.db import ProjectDB
    db = ProjectDB(sys.argv[1], busy_timeout=30)
    for line in sys.stdin:
        db.log_event("probe", actor="holder", n=int(line))
        print("ok", line.strip(), flush=True)
""")


def _holder(path: Path, linger: str) -> subprocess.Popen:
    env = {**os.environ, LINGER_ENV: linger, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)


def _ask(proc: subprocess.Popen, n: int) -> None:
    proc.stdin.write(f"{n}\n")
    proc.stdin.flush()
    assert proc.stdout.readline().split() == ["ok", str(n)]


def _file_is_held(path: Path) -> bool:
    try:
        duckdb.connect(str(path)).close()
    except duckdb.Error:
        return True
    return False


def _probe_events(db: ProjectDB) -> list[int]:
    events = db.events("probe")
    return sorted(int(json.loads(p)["n"]) for p in events["payload"])


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "project.duckdb"
    ProjectDB(path).create()
    return path


def test_a_lingering_process_keeps_the_file_and_gives_it_up_when_asked(database: Path):
    holder = _holder(database, "30")
    try:
        _ask(holder, 1)
        assert _file_is_held(database)  # kept between operations: the next one needs no new connection
        started = time.monotonic()
        other = ProjectDB(database, busy_timeout=10)  # this process does not linger: it asks and waits
        assert _probe_events(other) == [1]  # the holder's committed write is there
        assert time.monotonic() - started < 5
        assert not _file_is_held(database)  # nor does this process keep it
        _ask(holder, 2)  # the holder opens the file again for its next operation
        other.log_event("probe", actor="other", n=3)
        _ask(holder, 4)
        assert _probe_events(other) == [1, 2, 3, 4]
    finally:
        holder.kill()
        holder.wait()


def test_an_idle_lingering_process_lets_the_file_go_by_itself(database: Path):
    holder = _holder(database, "0.5")
    try:
        _ask(holder, 1)
        deadline = time.monotonic() + 10
        while _file_is_held(database):  # asking nobody (a plain connect touches no .wanted file)
            assert time.monotonic() < deadline, "an idle lingering process kept the file"
            time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait()


def test_an_acknowledged_write_survives_kill_9_of_a_lingering_process(database: Path):
    holder = _holder(database, "30")
    try:
        for n in range(1, 6):
            _ask(holder, n)
    finally:
        holder.send_signal(signal.SIGKILL)  # no atexit, no checkpoint: the log is all that is on disk
        holder.wait()
    assert _probe_events(ProjectDB(database)) == [1, 2, 3, 4, 5]


def test_in_process_lingering_nested_operations_and_failures(database: Path, monkeypatch):
    monkeypatch.setenv(LINGER_ENV, "30")
    db = ProjectDB(database)
    key = str(database.resolve())
    try:
        db.log_event("probe", n=1)
        kept = dbmod._LINGERING[key]
        with db.write() as con:  # the kept connection, in a transaction
            assert con is kept.con
            con.execute("INSERT INTO events (logged_at, actor, kind, payload) VALUES (now(), 'x', 'probe', '{\"n\": 2}')")
            assert _probe_events(db) == [1]  # a nested read is its own connection: it sees committed rows only
        assert _probe_events(db) == [1, 2]
        with pytest.raises(CxrAlError), db.write() as con:  # a failed operation rolls back ...
            con.execute("INSERT INTO events (logged_at, actor, kind, payload) VALUES (now(), 'x', 'probe', '{\"n\": 3}')")
            raise CxrAlError("refused")
        assert key not in dbmod._LINGERING or dbmod._LINGERING[key] is not kept  # ... and drops the kept connection
        assert _probe_events(db) == [1, 2]
    finally:
        dbmod.close_lingering()
    assert key not in dbmod._LINGERING
    assert not _file_is_held(database)


def test_without_the_setting_nothing_lingers(database: Path, monkeypatch):
    monkeypatch.delenv(LINGER_ENV, raising=False)
    db = ProjectDB(database)
    db.log_event("probe", n=1)
    assert str(database.resolve()) not in dbmod._LINGERING
    assert not _file_is_held(database)

"""The clear-cache gate (ui/gate.py) without a browser: on Streamlit's websocket a clear-cache message from a client
without a live session never reaches Streamlit; a signed-in client's does, and every other message passes."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from streamlit.proto.BackMsg_pb2 import BackMsg

from active.delivery.serve import PROJECT_ENV
from active.views import sessions
from ui.gate import STREAM_PATH, CacheClearGate

CLEAR = BackMsg(clear_cache=True).SerializeToString()
HEARTBEAT = BackMsg(app_heartbeat=True).SerializeToString()


@pytest.fixture
def received(ui_project, monkeypatch) -> tuple[TestClient, list[str]]:
    """A test client of a stand-in for Streamlit's websocket behind the gate, and what the stand-in received."""
    monkeypatch.setenv(PROJECT_ENV, str(ui_project.root))
    kinds: list[str] = []

    async def stream(websocket) -> None:
        await websocket.accept()
        try:
            while True:
                message = BackMsg()
                message.ParseFromString(await websocket.receive_bytes())
                kinds.append(message.WhichOneof("type"))
                if kinds[-1] == "app_heartbeat":
                    await websocket.send_text("ack")
        except WebSocketDisconnect:
            pass

    app = Starlette(routes=[WebSocketRoute(STREAM_PATH, stream)], middleware=[Middleware(CacheClearGate)])
    return TestClient(app, base_url="http://127.0.0.1"), kinds


def _send(client: TestClient, cookie: str | None) -> None:
    headers = {"cookie": cookie} if cookie else {}
    with client.websocket_connect(STREAM_PATH, headers=headers) as ws:
        ws.send_bytes(CLEAR)
        ws.send_bytes(HEARTBEAT)
        assert ws.receive_text() == "ack"  # the clear request before it was handled (or dropped) by then


def test_a_stranger_cannot_clear_the_caches(received, ui_project) -> None:
    client, kinds = received
    _send(client, None)
    _send(client, f"{sessions.cookie_name(ui_project)}=made-up-token")
    assert kinds == ["app_heartbeat", "app_heartbeat"]


def test_a_signed_in_session_can_and_an_ended_one_cannot(received, ui_project) -> None:
    client, kinds = received
    token = sessions.start_session(ui_project, "alice")
    cookie = f"other=1; {sessions.cookie_name(ui_project)}={token}"
    _send(client, cookie)
    assert kinds == ["clear_cache", "app_heartbeat"]
    sessions.end_session(ui_project, token)
    _send(client, cookie)
    assert kinds[2:] == ["app_heartbeat"]


def test_a_session_of_another_project_on_the_same_host_does_not_count(received, ui_project, tmp_path) -> None:
    client, kinds = received
    token = sessions.start_session(ui_project, "alice")
    _send(client, f"{sessions.COOKIE_PREFIX}0123456789ab={token}")  # same token under another project's name
    assert kinds == ["app_heartbeat"]


def test_on_one_connection_a_session_that_ends_loses_the_right(received, ui_project, caplog) -> None:
    client, kinds = received
    token = sessions.start_session(ui_project, "alice")
    with client.websocket_connect(STREAM_PATH, headers={"cookie": f"{sessions.cookie_name(ui_project)}={token}"}) as ws:
        for ended in (False, True, True):
            if ended:
                sessions.end_session(ui_project, token)  # signed out in this tab: the websocket stays open
            ws.send_bytes(CLEAR)
            ws.send_bytes(HEARTBEAT)
            assert ws.receive_text() == "ack"
    assert kinds == ["clear_cache", "app_heartbeat", "app_heartbeat", "app_heartbeat"]
    assert caplog.text.count("refused a clear-cache request") == 1  # once per connection, not per message

"""What reaches Streamlit from a websocket that carries no live session: not the "clear cache" message.

Streamlit lets any websocket client ask the server to empty every st.cache_data / st.cache_resource cache
(the app's decoded images, predictions, overlays). This ASGI middleware (mounted by ui/server.py, so under
`cxr-al serve`) reads each message a client sends on Streamlit's websocket and drops a clear-cache request unless
the cookies of the request that opened the websocket hold a live CXR-AL session (active.views.sessions). Every
other message passes unchanged: the sign-in page itself needs them.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from starlette.requests import cookie_parser
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.runtime.runtime_util import get_max_widget_state_size_bytes

from active.views import sessions

STREAM_PATH = "/_stcore/stream"
_LOG = logging.getLogger("cxr_al.gate")
REFUSED = "refused a clear-cache request from a websocket without a live session"  # the server log's line


def _cookies(scope: dict[str, Any]) -> dict[str, str]:
    """The websocket request's cookies, parsed as Streamlit's st.context.cookies parses them."""
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            cookies.update(cookie_parser(value.decode("latin-1")))
    return cookies


def _asks_to_clear_cache(data: bytes | None) -> bool:
    """Whether a binary frame is a clear-cache BackMsg. Frames larger than Streamlit accepts are not parsed here
    (Streamlit closes the connection on them unparsed), so a client cannot make the gate parse 200 MB."""
    if not data or len(data) > get_max_widget_state_size_bytes():
        return False
    message = BackMsg()
    try:
        message.ParseFromString(data)
    except Exception:  # noqa: BLE001 - not a BackMsg: Streamlit answers that itself
        return False
    return message.WhichOneof("type") == "clear_cache"


def _signed_in(cookies: dict[str, str]) -> bool:
    from ui.session import load_project  # the served project, as the pages open it

    try:
        served = load_project()
        user, _ = sessions.session_user(served, cookies.get(sessions.cookie_name(served)), touch=False)
    except Exception:  # noqa: BLE001 - whatever fails here, the answer is "no"
        return False
    return user is not None


class CacheClearGate:
    """ASGI middleware: drop clear-cache messages on Streamlit's websocket unless it belongs to a live session."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket" or not scope.get("path", "").endswith(STREAM_PATH):
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        refused: list[bool] = []  # a missing or dead token never becomes live: refused once, then without a lookup

        async def gated_receive() -> dict[str, Any]:
            while True:
                message = await receive()
                if message.get("type") != "websocket.receive" or not _asks_to_clear_cache(message.get("bytes")):
                    return message
                if not refused:
                    if await anyio.to_thread.run_sync(_signed_in, cookies):  # live now: asked again next time
                        return message
                    refused.append(True)
                    _LOG.warning(REFUSED)

        await self.app(scope, gated_receive, send)

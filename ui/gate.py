"""What reaches Streamlit from a websocket that carries no live session: not the "clear cache" message.

Streamlit lets any websocket client ask the server to empty every st.cache_data / st.cache_resource cache
(the app's decoded images, predictions, overlays). This ASGI middleware (mounted by ui/server.py, so under
`cxr-al serve`) reads each message a client sends on Streamlit's websocket and drops a clear-cache request unless
the cookies of the request that opened the websocket hold a live CXR-AL session (active.views.sessions). Every
other message passes unchanged: the sign-in page itself needs them.
"""

from __future__ import annotations

import logging
from http.cookies import CookieError, SimpleCookie
from typing import Any

import anyio
from streamlit.proto.BackMsg_pb2 import BackMsg

from active.views import sessions

STREAM_PATH = "/_stcore/stream"
_LOG = logging.getLogger("cxr_al.gate")
REFUSED = "refused a clear-cache request from a websocket without a live session"  # the server log's line


def _cookies(scope: dict[str, Any]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
    return {key: morsel.value for key, morsel in jar.items()}


def _asks_to_clear_cache(data: bytes | None) -> bool:
    if not data:
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

        async def gated_receive() -> dict[str, Any]:
            while True:
                message = await receive()
                if message.get("type") != "websocket.receive" or not _asks_to_clear_cache(message.get("bytes")):
                    return message
                if await anyio.to_thread.run_sync(_signed_in, cookies):
                    _LOG.info("cache cleared at a signed-in session's request")
                    return message
                _LOG.warning(REFUSED)

        await self.app(scope, gated_receive, send)

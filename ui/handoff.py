"""The session cookie's hand-over: a one-time ticket the page gives the browser, exchanged by a small server route
for an HttpOnly cookie.

A script cannot set an HttpOnly cookie, and a cookie a script can set a script can read (an injected one, too).
So after a right password the page stores the new session's token here under a random single-use ticket (valid
for TICKET_TTL_S seconds) and sends the browser to HANDOFF_PATH?ticket=...; the route, served by the same process
(ui/server.py, Streamlit's st.App), takes the ticket, answers with Set-Cookie (HttpOnly, SameSite=Strict, Path=/,
Secure over HTTPS) and a redirect back to the page. The token never appears in a URL, a log or the page; the
ticket is useless once taken or expired. FORGET_PATH removes a cookie whose session is over (a script cannot).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from active.views.sessions import COOKIE_PREFIX  # the only cookies FORGET_PATH touches

HANDOFF_PATH = "/cxr-al/session"
FORGET_PATH = "/cxr-al/forget"
TICKET_TTL_S = 30.0


@dataclass(frozen=True)
class _Ticket:
    cookie: str
    token: str
    max_age: int
    expires: float


_TICKETS: dict[str, _Ticket] = {}
_LOCK = threading.Lock()
_MOUNTED = threading.Event()  # set when this process serves the routes (ui/server.py); not under `streamlit run app.py`


def mounted() -> bool:
    """Whether this process answers HANDOFF_PATH and FORGET_PATH."""
    return _MOUNTED.is_set()


def issue(cookie: str, token: str, max_age: int) -> str:
    """A new single-use ticket for setting cookie=token (max_age seconds) through HANDOFF_PATH."""
    ticket = secrets.token_urlsafe(32)
    now = time.monotonic()
    with _LOCK:
        for key in [k for k, t in _TICKETS.items() if t.expires < now]:  # expired, never taken
            del _TICKETS[key]
        _TICKETS[ticket] = _Ticket(cookie, token, int(max_age), now + TICKET_TTL_S)
    return ticket


def take(ticket: str) -> _Ticket | None:
    """The ticket's cookie, once; None when unknown, taken before or expired."""
    with _LOCK:
        found = _TICKETS.pop(ticket, None)
    return found if found is not None and found.expires >= time.monotonic() else None


def safe_next(path: str | None) -> str:
    """Where to send the browser afterwards: a path on this server only (never another site)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or any(c < " " for c in path):
        return "/"
    return path


def handoff_url(ticket: str, next_path: str) -> str:
    return f"{HANDOFF_PATH}?{urlencode({'ticket': ticket, 'next': safe_next(next_path)})}"


def forget_url(next_path: str) -> str:
    return f"{FORGET_PATH}?{urlencode({'next': safe_next(next_path)})}"


# ----------------------------------------------------------------------------- the routes (Starlette, in ui/server.py)
def _redirect(request, status: int = 303):
    from starlette.responses import RedirectResponse

    response = RedirectResponse(safe_next(request.query_params.get("next")), status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def handoff_route(request):
    """GET HANDOFF_PATH?ticket=T&next=P: set the ticket's cookie (if the ticket is good) and go back to P."""
    response = _redirect(request)
    found = take(request.query_params.get("ticket", ""))
    if found is not None:
        response.set_cookie(found.cookie, found.token, max_age=found.max_age, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
    return response


async def forget_route(request):
    """GET FORGET_PATH?next=P: remove this browser's CXR-AL session cookies (their sessions are over) and go back."""
    response = _redirect(request)
    for name in request.cookies:
        if name.startswith(COOKIE_PREFIX):
            response.delete_cookie(name, path="/", httponly=True, samesite="strict",
                                   secure=request.url.scheme == "https")
    return response


def routes() -> list:
    """The two routes, for st.App(..., routes=routes()); from then on pages hand cookies over through them."""
    from starlette.routing import Route

    _MOUNTED.set()
    return [Route(HANDOFF_PATH, handoff_route, methods=["GET"]), Route(FORGET_PATH, forget_route, methods=["GET"])]

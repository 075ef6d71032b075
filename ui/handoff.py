"""The session cookie's hand-over: a one-time ticket the page gives the browser, exchanged by a small server route
for an HttpOnly cookie.

A script cannot set an HttpOnly cookie, and a cookie a script can set a script can read (an injected one, too).
So after a right password the page stores the new session's token here under a random single-use ticket (valid
for TICKET_TTL_S seconds) and sends the browser to HANDOFF_PATH?ticket=...; the route, served by the same process
(ui/server.py, Streamlit's st.App), takes the ticket, answers with Set-Cookie (HttpOnly, SameSite=Strict, Path=/,
Secure over HTTPS, also behind a TLS proxy: the page says what its address bar says) and a redirect back to the
page. The token never appears in a URL, a log or the page; the ticket is useless once taken or expired.

A ticket only works in the browser it was issued to, so nobody can sign a victim into the attacker's own account
(login CSRF: a link to HANDOFF_PATH with the attacker's ticket): the route refuses navigations that browsers mark
as coming from another site (Sec-Fetch-Site), and the ticket is bound to the browser's Streamlit XSRF cookie
(random per browser), compared when it is taken. FORGET_PATH removes this project's cookie once its session is
over (a script cannot).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from active.views.sessions import COOKIE_PREFIX  # the only cookies FORGET_PATH touches

BINDING_COOKIE = "_streamlit_xsrf"  # Streamlit's random per-browser XSRF cookie: what a ticket is bound to

HANDOFF_PATH = "/cxr-al/session"
FORGET_PATH = "/cxr-al/forget"
TICKET_TTL_S = 30.0


@dataclass(frozen=True)
class _Ticket:
    cookie: str
    token: str
    max_age: int
    expires: float
    binding: str | None  # SHA-256 of the issuing browser's BINDING_COOKIE (None: it sent none)


def _digest(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode("utf-8")).hexdigest()


_TICKETS: dict[str, _Ticket] = {}
_LOCK = threading.Lock()
_MOUNTED = threading.Event()  # set when this process serves the routes (ui/server.py); not under `streamlit run app.py`


def mounted() -> bool:
    """Whether this process answers HANDOFF_PATH and FORGET_PATH."""
    return _MOUNTED.is_set()


def issue(cookie: str, token: str, max_age: int, binding: str | None = None) -> str:
    """A new single-use ticket for setting cookie=token (max_age seconds) through HANDOFF_PATH, in the browser whose
    BINDING_COOKIE is `binding` (the page's st.context.cookies)."""
    ticket = secrets.token_urlsafe(32)
    now = time.monotonic()
    with _LOCK:
        for key in [k for k, t in _TICKETS.items() if t.expires < now]:  # expired, never taken
            del _TICKETS[key]
        _TICKETS[ticket] = _Ticket(cookie, token, int(max_age), now + TICKET_TTL_S, _digest(binding))
    return ticket


def take(ticket: str, binding: str | None = None) -> _Ticket | None:
    """The ticket's cookie, once; None when unknown, taken before, expired, or presented by another browser than
    the one it was issued to (`binding`: the presenting browser's BINDING_COOKIE)."""
    with _LOCK:
        found = _TICKETS.pop(ticket, None)
    if found is None or found.expires < time.monotonic():
        return None
    if found.binding is not None and not hmac.compare_digest(found.binding, _digest(binding) or ""):
        return None
    return found


def safe_next(path: str | None) -> str:
    """Where to send the browser afterwards: a path on this server only (never another site)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or any(c < " " for c in path):
        return "/"
    return path


# ----------------------------------------------------------------------------- the routes (Starlette, in ui/server.py)
def _redirect(request):
    from starlette.responses import RedirectResponse

    response = RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _cross_site(request) -> bool:
    """A navigation the browser says came from another site (browsers without Sec-Fetch-Site: the binding holds)."""
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


def _secure(request) -> bool:
    """HTTPS as the browser sees it: this connection's scheme, or the page's word (secure=1) behind a TLS proxy.
    The page's word can only add Secure, never remove it."""
    return request.url.scheme == "https" or request.query_params.get("secure") == "1"


async def handoff_route(request):
    """GET HANDOFF_PATH?ticket=T&next=P[&secure=1]: set the ticket's cookie (if the ticket is good, presented by the
    browser it was issued to, from this site) and go back to P."""
    response = _redirect(request)
    if _cross_site(request):
        return response
    found = take(request.query_params.get("ticket", ""), request.cookies.get(BINDING_COOKIE))
    if found is not None:
        response.set_cookie(found.cookie, found.token, max_age=found.max_age, path="/", httponly=True,
                            samesite="strict", secure=_secure(request))
    return response


async def forget_route(request):
    """GET FORGET_PATH?name=N&next=P: remove this browser's CXR-AL session cookie N (its session is over; another
    project's on the same host stays) and go back to P."""
    response = _redirect(request)
    name = request.query_params.get("name", "")
    if name.startswith(COOKIE_PREFIX) and name in request.cookies and not _cross_site(request):
        response.delete_cookie(name, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response


def routes() -> list:
    """The two routes, for st.App(..., routes=routes()); from then on pages hand cookies over through them."""
    from starlette.routing import Route

    _MOUNTED.set()
    return [Route(HANDOFF_PATH, handoff_route, methods=["GET"]), Route(FORGET_PATH, forget_route, methods=["GET"])]

"""The session cookie's hand-over route (ui/handoff.py) without a browser: a ticket is good once, briefly and only in
the browser it was issued to, the cookie it sets is HttpOnly and SameSite=Strict, the redirect never leaves the
server, and the forget route removes only the named project's session cookie."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from ui import handoff


def handoff_url(ticket: str, next_path: str) -> str:
    """The address ui/session.deliver_cookie's script sends the browser to."""
    return f"{handoff.HANDOFF_PATH}?{urlencode({'ticket': ticket, 'next': next_path})}"


def forget_url(cookie: str, next_path: str) -> str:
    """The address ui/session.clear_cookie's script sends the browser to."""
    return f"{handoff.FORGET_PATH}?{urlencode({'name': cookie, 'next': next_path})}"


@pytest.fixture
def client() -> Iterator[TestClient]:
    mounted = handoff.mounted()
    yield TestClient(Starlette(routes=handoff.routes()), base_url="http://127.0.0.1", follow_redirects=False)
    if not mounted:  # the rest of the test process (AppTests) has no such route
        handoff._MOUNTED.clear()


def test_a_ticket_sets_an_httponly_cookie_once(client) -> None:
    ticket = handoff.issue("cxr_al_session_abc", "the-token", 3600)
    answer = client.get(handoff_url(ticket, "/label"))
    assert answer.status_code == 303 and answer.headers["location"] == "/label"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("cxr_al_session_abc=the-token;")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie and "Max-Age=3600" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; over HTTPS the cookie is Secure
    assert answer.headers["cache-control"] == "no-store"
    again = client.get(handoff_url(ticket, "/label"))  # replayed (history, a proxy log): nothing
    assert again.status_code == 303 and "set-cookie" not in again.headers
    assert "set-cookie" not in client.get(handoff_url("made-up", "/")).headers


def test_an_expired_ticket_sets_nothing(client, monkeypatch) -> None:
    ticket = handoff.issue("cxr_al_session_abc", "the-token", 3600)
    now = handoff.time.monotonic()
    monkeypatch.setattr(handoff.time, "monotonic", lambda: now + handoff.TICKET_TTL_S + 1)
    assert "set-cookie" not in client.get(handoff_url(ticket, "/")).headers


def test_over_https_the_cookie_is_secure(client) -> None:
    https = TestClient(client.app, base_url="https://127.0.0.1", follow_redirects=False)
    ticket = handoff.issue("cxr_al_session_abc", "the-token", 60)
    assert "Secure" in https.get(handoff_url(ticket, "/")).headers["set-cookie"]
    ticket = handoff.issue("cxr_al_session_abc", "the-token", 60)  # behind a TLS proxy: the page's address is https
    assert "Secure" in client.get(handoff_url(ticket, "/") + "&secure=1").headers["set-cookie"]


def test_a_ticket_works_only_in_the_browser_it_was_issued_to(client) -> None:
    """Login CSRF: an attacker's own ticket, sent to a victim as a link, must not sign the victim in as them."""
    ticket = handoff.issue("cxr_al_session_abc", "attackers-token", 60, binding="attackers-xsrf")
    client.cookies.set(handoff.BINDING_COOKIE, "victims-xsrf")
    assert "set-cookie" not in client.get(handoff_url(ticket, "/")).headers
    ticket = handoff.issue("cxr_al_session_abc", "the-token", 60, binding="victims-xsrf")
    cross = client.get(handoff_url(ticket, "/"), headers={"Sec-Fetch-Site": "cross-site"})
    assert "set-cookie" not in cross.headers  # a navigation from another site: refused even with the binding
    ticket = handoff.issue("cxr_al_session_abc", "the-token", 60, binding="victims-xsrf")
    same = client.get(handoff_url(ticket, "/"), headers={"Sec-Fetch-Site": "same-origin"})
    assert same.headers["set-cookie"].startswith("cxr_al_session_abc=the-token;")


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x",
                                    "", "/ok\r\nSet-Cookie: x=1"])
def test_the_redirect_stays_on_this_server(client, target) -> None:
    answer = client.get(handoff.HANDOFF_PATH, params={"ticket": "x", "next": target})
    assert answer.headers["location"] == "/"


def test_forget_removes_only_the_named_session_cookie(client) -> None:
    client.cookies.set("cxr_al_session_abc", "dead-token")
    client.cookies.set("cxr_al_session_def", "another-projects-live-token")  # same host, another port
    client.cookies.set("other_app", "keep")
    answer = client.get(forget_url("cxr_al_session_abc", "/signin?ended=idle"))
    assert answer.headers["location"] == "/signin?ended=idle"
    removed = answer.headers.get_list("set-cookie")
    assert len(removed) == 1 and removed[0].startswith('cxr_al_session_abc="";') and "Max-Age=0" in removed[0]
    assert "set-cookie" not in client.get(forget_url("other_app", "/")).headers  # not a session cookie

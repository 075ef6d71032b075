"""Sign-in through OpenID Connect (project.yaml access.oidc, Streamlit's st.login): the identity's claim names an
account, an identity is taken once and only while fresh, unknown and disabled identities are refused and logged
by keyed hash; `serve` checks the project's secrets file; and in headless Chromium against a local provider
(oidc-provider-mock, started here): the sign-in page offers it, it signs in as the account with its role, sign-out
is not undone by Streamlit's identity cookie, a stranger is refused, and the password form still works."""

from __future__ import annotations

import json
import os
import time

import pytest

from active.delivery.serve import check_oidc, secrets_path
from active.views import accounts
from active.views.accounts import OIDC_FRESH_S, SignInRefused, add_user, oidc_account, set_disabled
from store.config import oidc_sign_in
from store.errors import CxrAlError
from store.project import init_project

PROVIDER = "hospital"
LABEL = "Hospital SSO"
MEMBER = "ann@hospital.org"  # an account named by its email: the provider's user of that email signs in as it


def identity(email: str | None, *, iat: float | None = None, nonce: str = "n-1", provider: str = PROVIDER) -> dict:
    """st.user after a sign-in at the provider (the ID token's claims and what Streamlit adds)."""
    claims = {"is_logged_in": True, "provider": provider, "iss": "http://idp", "sub": f"sub-{email}",
              "aud": "cxr-al", "nonce": nonce, "iat": int(time.time() if iat is None else iat)}
    return claims if email is None else {**claims, "email": email}


@pytest.fixture
def project(tmp_path):
    project = init_project(tmp_path / "project", ["normal", "abnormal"], image_size=64)
    add_user(project, MEMBER, "lead", "member-secret-1")
    add_user(project, "Bob", "annotator", "bob-secret-12")
    return project


def test_a_fresh_identity_signs_in_as_the_account_its_claim_names_once(project, monkeypatch):
    user = oidc_account(project, identity(MEMBER), provider=PROVIDER)
    assert user == {"name": MEMBER, "role": "lead"}
    assert oidc_account(project, identity(MEMBER), provider=PROVIDER) is None  # the cookie left behind opens nothing
    monkeypatch.setattr(accounts, "_USED_IDENTITIES", {})  # a restarted server: the sign-in events remember it
    assert oidc_account(project, identity(MEMBER), provider=PROVIDER) is None
    assert oidc_account(project, identity(MEMBER, nonce="n-2"), provider="other") is None
    stale = identity(MEMBER, nonce="n-3", iat=time.time() - OIDC_FRESH_S - 5)
    assert oidc_account(project, stale, provider=PROVIDER) is None
    assert oidc_account(project, identity("bob", nonce="n-4"), provider=PROVIDER)["name"] == "Bob"  # case aside
    named = {**identity(None, nonce="n-5"), "preferred_username": "Bob"}
    assert oidc_account(project, named, provider=PROVIDER, claim="preferred_username")["name"] == "Bob"
    signins = project.db.events("signin")
    assert signins["actor"].tolist() == ["Bob", "Bob", MEMBER]
    assert json.loads(signins["payload"].iloc[-1])["provider"] == PROVIDER


def test_unknown_and_disabled_identities_are_refused_and_logged_without_the_value(project):
    with pytest.raises(SignInRefused, match="no account here matches your hospital sign-in 'eve@else.org'"):
        oidc_account(project, identity("eve@else.org"), provider=PROVIDER, address="10.0.0.9")
    with pytest.raises(SignInRefused, match="has no 'email'"):
        oidc_account(project, identity(None, nonce="n-2"), provider=PROVIDER)
    set_disabled(project, MEMBER, True)
    with pytest.raises(SignInRefused, match="disabled"):
        oidc_account(project, identity(MEMBER, nonce="n-3"), provider=PROVIDER)
    failed = project.db.events("signin_failed")
    assert failed["actor"].tolist()[0] == MEMBER and failed["actor"].isna().sum() == 2
    assert "eve@else.org" not in " ".join(failed["payload"])
    first = json.loads(failed["payload"].iloc[-1])
    assert first["reason"] == "hospital identity: no such account" and first["address"] == "10.0.0.9"
    assert len(first["name_hash"]) == 16
    assert project.db.signin_failures({"address:10.0.0.9": None})["address:10.0.0.9"][0] == 0  # no lockout count


def write_secrets(root, metadata_url: str = "http://localhost:1/.well-known/openid-configuration",
                  redirect_uri: str = "http://127.0.0.1:{port}/oauth2callback", mode: int = 0o600) -> None:
    path = secrets_path(root)
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'[auth]\nredirect_uri = "{redirect_uri}"\ncookie_secret = "{"k" * 40}"\n\n'
                    f'[auth.{PROVIDER}]\nclient_id = "cxr-al"\nclient_secret = "test-client-secret"\n'
                    f'server_metadata_url = "{metadata_url}"\n')
    os.chmod(path, mode)


def test_serve_checks_the_projects_secrets_file_when_oidc_is_on(project):
    check_oidc(project)  # off: nothing to check
    project.config["access"] = {"oidc": {"provider": PROVIDER, "label": LABEL}}
    project.save_config()
    assert oidc_sign_in(project.config) == {"enabled": True, "provider": PROVIDER, "label": LABEL, "claim": "email"}
    with pytest.raises(CxrAlError, match="secrets.toml is missing"):
        check_oidc(project)
    write_secrets(project.root, mode=0o644)
    with pytest.raises(CxrAlError, match="chmod 600"):
        check_oidc(project)
    write_secrets(project.root, redirect_uri="http://127.0.0.1:8501/")
    with pytest.raises(CxrAlError, match="/oauth2callback"):
        check_oidc(project)
    secrets_path(project.root).write_text('[auth]\nredirect_uri = "http://h/oauth2callback"\n')
    with pytest.raises(CxrAlError, match="missing auth.cookie_secret, auth.hospital.client_id"):
        check_oidc(project)
    write_secrets(project.root)
    check_oidc(project)
    project.config["access"]["oidc"]["enabled"] = False
    assert oidc_sign_in(project.config) is None


# ----------------------------------------------------------------------------- in the browser
@pytest.fixture(scope="module")
def provider():
    """A local OpenID Connect provider (any client id and secret; a user of any subject whose email is it)."""
    oidc_provider_mock = pytest.importorskip("oidc_provider_mock")
    member = oidc_provider_mock.User(sub="ann-sub", claims={"email": MEMBER, "name": "Ann"})
    with oidc_provider_mock.run_server_in_thread(user_claims=[member]) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def oidc_url(tmp_path_factory, labeling_project, app_server, provider):
    pytest.importorskip("authlib")
    project = labeling_project(tmp_path_factory.mktemp("oidc"), n=16, queued=4)
    add_user(project, MEMBER, "lead", "member-secret-1")
    project.config["access"] = {"oidc": {"provider": PROVIDER, "label": LABEL}}
    project.save_config()
    write_secrets(project.root, f"{provider}/.well-known/openid-configuration")
    with app_server(project.root, "streamlit-oidc.log") as url:
        yield url, project


@pytest.mark.browser
def test_sign_in_through_the_provider_in_the_browser(oidc_url, new_page, passwords):
    from browser_steps import explain_failure, sign_out
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    url, project = oidc_url
    page = new_page()
    page.goto(url)
    try:
        page.get_by_role("button", name=f"Sign in with {LABEL}").click()
        page.get_by_role("button", name="ann-sub").click()  # the provider's page: sign in as its user
        page.get_by_text(f"Signed in as {MEMBER} (lead)").wait_for()
    except PlaywrightTimeout:
        raise explain_failure(page, "the provider's user was not signed in") from None
    assert page.get_by_role("link", name="Progress").count()  # a lead's page
    sign_out(page)
    page.reload()  # Streamlit's identity cookie is still in the browser: it must not sign anyone in again
    page.get_by_label("Username", exact=True).wait_for()
    page.wait_for_timeout(1500)
    assert not page.get_by_text("Signed in as").count(), "the identity cookie signed in again after sign-out"
    assert "_streamlit_user" in {c["name"] for c in page.context.cookies()}  # ... although the browser sent it

    stranger = new_page()
    stranger.goto(url)
    stranger.get_by_role("button", name=f"Sign in with {LABEL}").click()
    stranger.locator("input[name=sub]").fill("eve@else.org")
    stranger.get_by_role("button", name="Authorize").click()
    try:
        stranger.get_by_text("no account here matches your hospital sign-in 'eve@else.org'").wait_for()
    except PlaywrightTimeout:
        raise explain_failure(stranger, "the unknown identity was not refused") from None
    assert not stranger.get_by_text("Signed in as").count()

    stranger.get_by_label("Username", exact=True).fill("alice")  # the password form still works next to it
    stranger.get_by_label("Password", exact=True).fill(passwords["alice"])
    stranger.get_by_role("button", name="Sign in", exact=True).click()
    stranger.get_by_text("Signed in as alice (annotator)").wait_for()
    assert project.db.events("signin")["actor"].tolist()[:2] == ["alice", MEMBER]

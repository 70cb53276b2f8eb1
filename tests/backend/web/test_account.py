"""Account pages: sign-in with a password or a token (capped by its scope, ended with it), sign-out,
my tokens (shown once, revoked), my teams (admins manage members); CSRF on every POST."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pefthub_server.core.models import ApiToken, hash_secret
from pefthub_server.core.tokens import job_token_create, token_create
from tests.conftest import worker_token

MIDDLEWARE = "pefthub_server.core.auth.SessionTokenMiddleware"
PASSWORD = "a-long-passphrase-9"


@pytest.fixture(autouse=True)
def session_tokens(settings):
    """The middleware that re-checks a token session on each request (settings.MIDDLEWARE lists it)."""
    if MIDDLEWARE not in settings.MIDDLEWARE:
        at = settings.MIDDLEWARE.index("django.contrib.messages.middleware.MessageMiddleware") + 1
        settings.MIDDLEWARE = [*settings.MIDDLEWARE[:at], MIDDLEWARE, *settings.MIDDLEWARE[at:]]


def with_password(person):
    person.user.set_password(PASSWORD)
    person.user.save()
    return person


def token_client(secret: str) -> Client:
    client = Client()
    response = client.post("/account/sign-in", {"token": secret})
    assert response.status_code == 302, response.content.decode()
    return client


def text(response) -> str:
    return response.content.decode()


# --- sign-in, sign-out ------------------------------------------------------------------------


def test_password_sign_in_follows_a_local_next_and_sign_out_ends_it(client, bob):
    with_password(bob)
    assert 'name="csrfmiddlewaretoken"' in text(client.get("/account/sign-in?next=/account/teams"))
    response = client.post("/account/sign-in", {"username": "bob", "password": PASSWORD, "next": "/account/teams"})
    assert (response.status_code, response["Location"]) == (302, "/account/teams")
    page = text(client.get("/account/teams"))
    assert '<a href="/account/teams/acme">acme</a>' in page and "<td>write</td>" in page
    assert client.get("/account/sign-out").status_code == 405  # POST only
    assert client.post("/account/sign-out").status_code == 302
    response = client.get("/account/teams")
    assert (response.status_code, response["Location"]) == (302, "/account/sign-in?next=%2Faccount%2Fteams")


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "http:/evil.example",
                                    "javascript:alert(1)", "evil.example", "/account/sign-in?next=/account/tokens"])
def test_next_elsewhere_is_not_followed(client, bob, target):
    with_password(bob)
    assert text(client.get("/account/sign-in", {"next": target})).count('name="next" value="/"') == 2
    response = client.post("/account/sign-in", {"username": "bob", "password": PASSWORD, "next": target})
    assert (response.status_code, response["Location"]) == (302, "/")


def test_wrong_password_says_so_and_a_token_only_user_learns_how_to_sign_in(client, bob):
    response = client.post("/account/sign-in", {"username": "bob", "password": "not-it-at-all"})
    assert response.status_code == 401
    assert "Wrong username or password" in text(response) and "sign in with an API token" in text(response)
    assert client.post("/account/sign-in", {"username": "bob"}).status_code == 400


def test_web_sign_in_goes_through_the_admin_lockout_and_answers_with_a_page(client, bob, settings):
    with_password(bob)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post("/account/sign-in", {"username": "bob", "password": "wrong-wrong-1"}).status_code == 401
    locked = client.post("/account/sign-in", {"username": "bob", "password": "wrong-wrong-1"})
    assert locked.status_code == 429 and locked["Content-Type"].startswith("text/html")
    assert "locked" in text(locked) and "bob" in text(locked) and int(locked["Retry-After"]) > 0
    # The right password is refused while locked, from the web form as from the admin.
    assert client.post("/account/sign-in", {"username": "bob", "password": PASSWORD}).status_code == 429
    assert client.post("/admin/login/", {"username": "bob", "password": PASSWORD}).status_code == 429


def test_token_session_keeps_no_secret_and_is_capped_by_the_token_scope(bob):
    secret = bob.new_token("read", name="reader")
    client = token_client(secret)
    assert secret not in str(dict(client.session))
    page = client.get("/account/tokens")
    assert page.status_code == 200 and "cannot create or revoke" in text(page) and "Create token" not in text(page)
    refused = client.post("/account/tokens", {"name": "more", "scope": "read"})
    assert refused.status_code == 403 and "scope `read`" in text(refused) and "create tokens" in text(refused)
    assert not ApiToken.objects.filter(name="more").exists()
    # A write token's session may mint read and write tokens, not admin ones (as the API rules).
    writer = token_client(bob.new_token("write", name="writer"))
    assert 'value="admin"' not in text(writer.get("/account/tokens"))
    refused = writer.post("/account/tokens", {"name": "up", "scope": "admin"})
    assert refused.status_code == 403 and "A `write` token cannot create a `admin` token" in text(refused)
    assert writer.post("/account/tokens", {"name": "down", "scope": "read"}).status_code == 201


def test_revoked_or_expired_token_session_is_signed_out_at_the_next_request(bob):
    revoked_secret, expired_secret = bob.new_token("write", name="soon-revoked"), bob.new_token("read", name="soon-expired")
    revoked, expired = token_client(revoked_secret), token_client(expired_secret)
    assert revoked.get("/account/teams").status_code == 200 and expired.get("/account/teams").status_code == 200
    ApiToken.objects.filter(name="soon-revoked").update(revoked_at=timezone.now())
    ApiToken.objects.filter(name="soon-expired").update(expires_at=timezone.now() - timedelta(seconds=1))
    for client in (revoked, expired):
        response = client.get("/account/teams")
        assert response.status_code == 302 and response["Location"].startswith("/account/sign-in")
        assert "_auth_user_id" not in client.session
    assert "was revoked" in text(revoked.get("/account/sign-in"))  # the reason, once


def test_bad_job_and_worker_tokens_cannot_sign_in(client, bob):
    assert client.post("/account/sign-in", {"token": "phub_nothing-like-it"}).status_code == 401
    job_secret = job_token_create(user=bob.user, name="job:1", expires_at=timezone.now() + timedelta(hours=1))[1]
    refused = client.post("/account/sign-in", {"token": job_secret})
    assert refused.status_code == 403 and "A job token belongs to one running job" in text(refused)
    refused = client.post("/account/sign-in", {"token": worker_token()})
    assert refused.status_code == 403 and "A worker token only claims jobs" in text(refused)
    assert "_auth_user_id" not in client.session


def test_every_post_needs_the_csrf_token(bob):
    with_password(bob)
    client = Client(enforce_csrf_checks=True)
    assert client.post("/account/sign-in", {"username": "bob", "password": PASSWORD}).status_code == 403
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', text(client.get("/account/sign-in"))).group(1)
    assert client.post("/account/sign-in", {"username": "bob", "password": PASSWORD,
                                            "csrfmiddlewaretoken": csrf}).status_code == 302
    token = ApiToken.objects.get(user=bob.user)
    for url, body in [("/account/tokens", {"name": "x"}), (f"/account/tokens/{token.pk}/revoke", {}),
                      ("/account/teams/acme/members", {"username": "carol"}), ("/account/sign-out", {})]:
        assert client.post(url, body).status_code == 403, url
    assert not ApiToken.objects.get(pk=token.pk).revoked and client.get("/account/tokens").status_code == 200


# --- tokens -----------------------------------------------------------------------------------


def test_a_token_made_on_the_page_is_shown_once_works_and_is_revoked_there(client, bob, api):
    client.force_login(bob.user)
    made = client.post("/account/tokens", {"name": "laptop", "scope": "write", "expires_in_days": "30"})
    assert made.status_code == 201 and made["Cache-Control"].startswith("max-age=0")
    secret = re.search(r'<pre id="secret" tabindex="0">(phub_[^<]+)</pre>', text(made)).group(1)
    token = ApiToken.objects.get(secret_hash=hash_secret(secret))
    assert (token.name, token.scope, token.expires_at.date()) == ("laptop", "write", (timezone.now() + timedelta(days=30)).date())
    assert api(secret).get("/api/v1/whoami").json()["username"] == "bob"
    listing = text(client.get("/account/tokens"))
    assert secret not in listing and f"<code>{token.prefix}…</code>" in listing
    bad = client.post("/account/tokens", {"name": "x", "expires_in_days": "9999"})
    assert bad.status_code == 400 and "expires_in_days" in text(bad)
    assert client.post("/account/tokens", {"name": "x", "scope": "worker"}).status_code == 403  # bob is not staff
    revoked = client.post(f"/account/tokens/{token.pk}/revoke")
    assert (revoked.status_code, revoked["Location"]) == (302, "/account/tokens")
    assert api(secret).get("/api/v1/whoami").status_code == 401
    assert "Token revoked" in text(client.get("/account/tokens"))
    other = ApiToken.objects.get(user__username="alice")
    assert client.post(f"/account/tokens/{other.pk}/revoke").status_code == 404 and not ApiToken.objects.get(pk=other.pk).revoked


def test_tokens_page_runs_the_same_queries_for_2_or_200_tokens(client, bob):
    client.force_login(bob.user)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/account/tokens").status_code == 200
        return len(captured)

    small = queries()
    for i in range(199):
        token_create(user=bob.user, name=f"t{i}", scope="read")
    assert queries() == small


# --- teams ------------------------------------------------------------------------------------


def test_team_admin_manages_members_and_others_read_only(client, alice, bob, carol):
    client.force_login(alice.user)
    page = text(client.get("/account/teams/acme"))
    assert "Add a member" in page and 'action="/account/teams/acme/members/bob/remove"' in page
    assert client.post("/account/teams/acme/members", {"username": "carol", "role": "read"}).status_code == 302
    assert client.post("/account/teams/acme/members/carol/role", {"role": "write"}).status_code == 302
    from pefthub_server.registry.models import Membership

    roles = dict(Membership.objects.filter(namespace__name="acme").values_list("user__username", "role"))
    assert roles == {"alice": "admin", "bob": "write", "carol": "write"}
    taken = client.post("/account/teams/acme/members", {"username": "carol"})
    assert taken.status_code == 409 and "already a member" in text(taken)
    missing = client.post("/account/teams/acme/members", {"username": "nobody"})
    assert missing.status_code == 404 and "User `nobody` not found" in text(missing)
    last = client.post("/account/teams/acme/members/alice/remove")
    assert last.status_code == 400 and "last admin" in text(last)
    assert client.post("/account/teams/acme/members/carol/remove").status_code == 302
    # bob (write) sees the members read-only and cannot change them.
    bob_client = Client()
    bob_client.force_login(bob.user)
    page = text(bob_client.get("/account/teams/acme"))
    assert "<td>admin</td>" in page and "Add a member" not in page and "/remove" not in page
    refused = bob_client.post("/account/teams/acme/members", {"username": "carol"})
    assert refused.status_code == 403 and "You need the `admin` role in `acme`" in text(refused)
    # carol (no member) is told the team is not found, whatever she asks.
    carol_client = Client()
    carol_client.force_login(carol.user)
    assert "You belong to no team" in text(carol_client.get("/account/teams"))
    assert carol_client.get("/account/teams/acme").status_code == 404
    assert carol_client.post("/account/teams/acme/members", {"username": "carol"}).status_code == 404
    assert set(Membership.objects.filter(namespace__name="acme").values_list("user__username", flat=True)) == {"alice", "bob"}


def test_a_read_token_session_of_a_team_admin_cannot_manage_members(alice):
    client = token_client(alice.new_token("read"))
    assert "Add a member" not in text(client.get("/account/teams/acme"))
    assert client.post("/account/teams/acme/members", {"username": "carol"}).status_code == 403


# --- adduser --password, changepassword -------------------------------------------------------


def test_adduser_sets_a_password_from_stdin_and_changepassword_works_for_non_staff(db, client, monkeypatch):
    monkeypatch.setattr("sys.stdin", StringIO(PASSWORD + "\n"))
    out, err = StringIO(), StringIO()
    call_command("adduser", "erin", "--team", "acme", "--password-stdin", stdout=out, stderr=err)
    assert out.getvalue().startswith("phub_") and "password set" in err.getvalue()
    assert client.post("/account/sign-in", {"username": "erin", "password": PASSWORD}).status_code == 302
    monkeypatch.setattr("sys.stdin", StringIO("short\n"))
    with pytest.raises(CommandError, match="Password refused: This password is too short"):
        call_command("adduser", "erin", "--password-stdin", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="pipe the password to --password-stdin"):
        call_command("adduser", "erin", "--password", stdout=StringIO(), stderr=StringIO())
    # Django's changepassword asks twice with getpass; erin is not staff.
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "another-long-phrase-7")
    call_command("changepassword", "erin", stdout=StringIO())
    assert Client().post("/account/sign-in", {"username": "erin", "password": "another-long-phrase-7"}).status_code == 302


def test_guessing_tokens_at_sign_in_is_throttled_as_on_the_api(client, settings, db):
    limit = int(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["auth_failures_per_address"].split("/")[0])
    for i in range(limit):
        assert client.post("/account/sign-in", {"token": f"phub_guess-{i}"}).status_code == 401
    throttled = client.post("/account/sign-in", {"token": "phub_guess-last"})
    assert throttled.status_code == 429 and "Too many failed authentications" in text(throttled)
    assert int(throttled["Retry-After"]) > 0

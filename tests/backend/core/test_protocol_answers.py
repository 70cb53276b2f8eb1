"""Answers made around the views: under /api/ (and /hf/) every one is JSON, web pages keep Django's HTML.

405 for every API route and method it does not serve, CSRF never standing in for a 404 or
405 on the token APIs, a bad Host header, a body over the limit, HEAD without a body. The
wire-level half (the real server, keep-alive, bodies refused before they are read) is
tests/e2e/test_server_protocol.py.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client, RequestFactory

from pefthub_server.core.middleware import HeadWithoutBodyMiddleware
from tests.backend.routes import class_views
from tests.backend.test_urls import _path

METHODS = ("get", "post", "put", "patch", "delete", "head")
SAMPLES = {"ns": "acme", "name": "bot", "rev": "1", "alias": "prod", "sha256": "0" * 64, "team": "acme",
           "username": "bob", "token_id": 1, "job_id": uuid.UUID(int=7).hex, "step": 2}


def _serves(view, method: str) -> bool:
    return hasattr(view, method) or (method == "head" and hasattr(view, "get"))


@pytest.mark.django_db
def test_every_api_route_answers_a_method_it_does_not_serve_with_a_json_405():
    client, checked = Client(), 0
    for text, pattern, view in class_views("api/"):
        path = _path(text, pattern, SAMPLES)
        for method in METHODS:
            if _serves(view, method):
                continue
            response = client.generic(method.upper(), path)
            assert response.status_code == 405, (method, path, response.status_code)
            assert response["Content-Type"] == "application/json" and "Allow" in response, (method, path)
            checked += 1
            if method == "head":
                continue  # no body to read: the HEAD tests below
            error = response.json()["error"]
            assert error["code"] == "method_not_allowed", (method, path, error)
            allowed = [m.strip() for m in response["Allow"].split(",") if m.strip() != "OPTIONS"]
            assert error["message"] == f"{method.upper()} is not allowed on {path}; use {', '.join(allowed)}."
    assert checked >= 40


def test_a_post_to_an_unknown_api_url_with_a_session_cookie_is_a_json_404(alice):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice.user)
    response = browser.post("/api/v1/nope", {"a": "b"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    hf = browser.post("/hf/api/repos/nope", {"name": "x"})
    assert hf.status_code == 404 and "No Hugging Face-compatible endpoint" in hf.json()["error"]
    # /hf writes take tokens only: a browser session (cross-site form posts included) is not enough
    created = browser.post("/hf/api/repos/create", {"name": "x"}, content_type="application/json")
    assert created.status_code == 401 and "HF_TOKEN" in created.json()["error"]
    assert browser.post("/hf/api/models/acme/x").status_code == 405  # a GET-only route, not a CSRF page


def test_web_forms_still_check_csrf_and_answer_in_html(db):
    response = Client(enforce_csrf_checks=True).post("/admin/login/", {"username": "a", "password": "b"})
    assert response.status_code == 403 and response["Content-Type"].startswith("text/html")


def test_a_bad_host_is_a_json_400_under_api_and_a_page_elsewhere(db):
    client = Client()
    api = client.get("/api/v1/", HTTP_HOST="evil.example")
    error = api.json()["error"]
    assert api.status_code == 400 and error["code"] == "bad_request"
    assert "evil.example" in error["message"] and "ALLOWED_HOSTS" in error["message"]
    page = client.get("/", HTTP_HOST="evil.example")
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


def test_a_body_over_the_limit_is_a_json_413(alice, api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"namespace": "acme", "name": "bot", "kind": "model", "description": "x" * 2000})
    response = api(alice.token).generic("POST", "/api/v1/repos", body, content_type="application/json")
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/", "/nope/nope/nope", "/static/admin/css/base.css"])
def test_head_answers_carry_the_get_length_and_no_body(db, path):
    """Through the WSGI handler itself: the test client would strip a HEAD body and hide the fault."""
    from django.core.handlers.wsgi import WSGIHandler

    def call(method):
        environ = RequestFactory().generic(method, path).environ
        started = {}
        body = b"".join(WSGIHandler()(environ, lambda status, headers: started.update(status=status, headers=headers)))
        return started["status"], dict(started["headers"]), body

    status, headers, body = call("HEAD")
    get_status, _, get_body = call("GET")
    assert body == b"" and status == get_status
    assert int(headers["Content-Length"]) == len(get_body)


def test_head_drops_a_streamed_file_unread(db, tmp_path, rf):  # db: closing a response signals request_finished
    from django.http import FileResponse

    handle = (tmp_path / "f.bin").open("wb+")
    handle.write(b"x" * 100)
    handle.seek(0)
    response = HeadWithoutBodyMiddleware(lambda request: FileResponse(handle))(rf.head("/"))
    assert b"".join(response) == b"" and response["Content-Length"] == "100" and handle.tell() == 0
    response.close()
    assert handle.closed


def test_a_crash_is_a_json_500_under_api_and_hf_and_a_page_elsewhere(rf):
    """The handler Django calls for an unhandled exception (handler500)."""
    from pefthub_server.core.errors import server_error

    for path in ("/api/v1/repos", "/hf/api/models/acme/x"):
        response = server_error(rf.get(path))
        assert response.status_code == 500 and json.loads(response.content)["error"]["code"] == "server_error"
    page = server_error(rf.get("/acme"))
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("path", ["/api/v1/repos", "/hf/api/models/acme/x", "/api/v1/whoami"])
def test_a_lost_database_is_a_503_that_says_so(alice, path):
    """Every query fails as when PostgreSQL restarts under the hub (Django's own execute hook)."""
    from django.db import OperationalError, connection

    def refuse(execute, sql, params, many, context):
        raise OperationalError("server closed the connection unexpectedly")

    client = Client(raise_request_exception=False)
    with connection.execute_wrapper(refuse):
        response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {alice.token}")
    body = json.loads(response.content)
    assert response.status_code == 503 and body["error"]["code"] == "database_unavailable", body
    assert "database" in body["error"]["message"] and response["Retry-After"] == "5"
    with connection.execute_wrapper(refuse):
        page = client.get("/")
    assert page.status_code == 503 and b"database" in page.content


@pytest.mark.parametrize(("url", "field"), [
    ("/api/v1/jobs?status=AAA", "status"), ("/api/v1/jobs?type=finetune", "type"), ("/api/v1/repos?kind=models", "kind"),
])
def test_an_unknown_filter_value_is_a_400_naming_the_choices(alice, api, url, field):
    response = api(alice.token).get(url)
    error = response.json()["error"]
    assert response.status_code == 400 and error["detail"] == {"field": field}, error
    assert "is not one of" in error["message"]
    assert api(alice.token).get(url.split("=")[0] + "=").status_code == 200  # empty: no filter

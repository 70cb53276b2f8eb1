from __future__ import annotations

import json

import pytest
import requests

from pefthub import errors
from pefthub.errors import error_from_response


def response(status: int, body, *, request_id: str | None = "req-42", content_type="application/json"):
    r = requests.Response()
    r.status_code = status
    r.reason = "Reason"
    r._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r.headers["Content-Type"] = content_type
    if request_id:
        r.headers["X-Request-ID"] = request_id
    return r


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "pickle_refused", errors.ValidationError),
        (401, "authentication_failed", errors.AuthenticationFailed),
        (403, "permission_denied", errors.PermissionDenied),
        (404, "not_found", errors.NotFound),
        (409, "conflict", errors.Conflict),
        (429, "throttled", errors.RateLimited),
        (500, "internal_error", errors.ServerError),
        (503, "unavailable", errors.ServerError),
        (405, "method_not_allowed", errors.HubError),
        (413, "too_large", errors.HubError),
    ],
)
def test_maps_status_and_keeps_the_servers_words(status, code, cls):
    detail = {"path": "pytorch_model.bin"}
    err = error_from_response(
        response(status, {"error": {"code": code, "message": "`pytorch_model.bin` is a pickle", "detail": detail}})
    )
    assert type(err) is cls
    assert (err.status, err.code, err.message, err.detail, err.request_id) == (
        status, code, "`pytorch_model.bin` is a pickle", detail, "req-42",
    )
    text = str(err)
    assert str(status) in text and code in text and "`pytorch_model.bin` is a pickle" in text
    assert "req-42" in text


def test_every_400_is_both_validation_error_and_bad_request():
    err = error_from_response(response(400, {"error": {"code": "shape_mismatch", "message": "m", "detail": None}}))
    assert isinstance(err, errors.ValidationError) and isinstance(err, errors.BadRequest)
    assert isinstance(err, errors.HubError)


def test_body_not_in_our_shape_keeps_an_excerpt():
    err = error_from_response(
        response(502, b"<html>Bad Gateway from nginx</html>", request_id=None, content_type="text/html")
    )
    assert type(err) is errors.ServerError
    assert err.code is None and err.request_id is None
    assert "Bad Gateway from nginx" in str(err) and "502" in str(err)


def test_s3_xml_error_is_readable():
    xml = b"<?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code></Error>"
    err = error_from_response(response(403, xml, request_id=None, content_type="application/xml"))
    assert type(err) is errors.PermissionDenied
    assert "SignatureDoesNotMatch" in err.message


def test_local_errors_share_the_base():
    for cls in (errors.RefError, errors.IntegrityError, errors.HubConnectionError):
        assert issubclass(cls, errors.HubError)
    assert str(errors.HubError("plain")) == "plain"

"""The OpenAPI schema's account of errors: one error shape, and the errors every operation can answer.

Every error is ``{"error": {"code", "message", "detail"}}`` (:mod:`pefthub_server.core.errors`).
:class:`HubAutoSchema` adds to each operation the error responses its shape implies: any
operation may answer 401 (a token that is sent must be valid), 429 (too many failed
authentications, :mod:`pefthub_server.core.throttling`) and 503 (the database is out of
reach); one that takes parameters or a body, 400; a change (POST, PUT, PATCH, DELETE), 403
(token scope or namespace role); one addressed by path parameters, 404; one with a request
body, 413. A view lists the others it can answer (a 409 on create, a 404 on a list past its
last page) with :func:`errors`.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

_DESCRIPTIONS = {
    400: "Bad request: a field, parameter or name that breaks a rule; `message` names it and says how to fix it.",
    401: "No valid token: send `Authorization: Bearer <token>` with a token that is neither revoked nor expired.",
    403: "The token's scope or your role in the namespace does not allow this.",
    404: "Not found, or not visible to you (what you cannot read is reported as not found).",
    409: "Conflicts with the current state (it exists already, or the job is not in a state that allows this).",
    413: "The request body is too large.",
    416: "The requested byte range lies outside the file.",
    429: "Too many failed authentications from this address or for this token: wait `Retry-After` seconds.",
    503: "The hub cannot reach its database (restarting or down): retry after `Retry-After` seconds.",
}
_WRITES = ("POST", "PUT", "PATCH", "DELETE")

#: ``@extend_schema(auth=ANONYMOUS_OK)``: callers without a token may make this call too (public
#: repositories, signed blob URLs); other operations need a token (401 without, or 404 for what
#: an anonymous caller cannot see).
ANONYMOUS_OK = [{"bearerAuth": []}, {}]


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="A stable machine code: `not_found`, `validation_error`, `pickle_refused`, …")
    message = serializers.CharField(help_text="What went wrong, naming the bad value, and how to fix it.")
    # Any JSON value, null included (allow_null would make drf-spectacular write a oneOf that null matches twice).
    detail = serializers.JSONField(help_text="Per-field errors or other facts; null when there are none.")


class ErrorSerializer(serializers.Serializer):
    """The shape of every error the API returns."""

    error = ErrorBodySerializer()


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    """Error responses for ``@extend_schema(responses={..., **errors(409)})``."""
    return {code: OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[code]) for code in codes}


#: Example values of path parameters: the README's running example (tests/fuzz seeds these very objects).
PATH_EXAMPLES = {"ns": "acme", "name": "support-bot", "rev": "prod", "alias": "prod", "team": "acme", "username": "bob"}


class HubAutoSchema(AutoSchema):
    """drf-spectacular's schema, plus the error responses each operation can answer and path examples."""

    def _resolve_path_parameters(self, variables):
        parameters = super()._resolve_path_parameters(variables)
        for parameter in parameters:
            if parameter["name"] in PATH_EXAMPLES:
                parameter["example"] = PATH_EXAMPLES[parameter["name"]]
        return parameters

    def _implied_error_codes(self) -> list[int]:
        has_body = self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None
        by_path = "{" in self.path
        codes = [401, 429, 503]
        if has_body or by_path or self.get_override_parameters():
            codes.append(400)
        if self.method in _WRITES:
            codes.append(403)
        if by_path:
            codes.append(404)
        if has_body:
            codes.append(413)
        return codes

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code, response in errors(*self._implied_error_codes()).items():
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(response, str(code), direction=direction)
        return dict(sorted(responses.items()))

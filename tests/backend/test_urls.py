"""Every /api/v1 route, walked from the URL table: anonymous and outsider callers learn nothing.

For each route and each method its view serves, with the path naming alice's private objects:
- an anonymous caller gets a 401 or a 404 (public reads excepted), in the error shape;
- carol, signed in but in no team, gets a 4xx in the error shape, and exactly the answer (status and
  code) she gets for objects that do not exist: no answer depends on what she cannot read.
A route with a path parameter this test has no sample for fails the test: add one.
"""

from __future__ import annotations

import re
import uuid

import pytest

from pefthub_server.core.models import ApiToken
from pefthub_server.jobs.models import Job, JobCheckpoint
from pefthub_server.registry.models import Namespace
from tests.backend.routes import class_views
from tests.conftest import api_push

METHODS = ("get", "post", "put", "patch", "delete")
#: reads anyone may make: they list only what the caller may read
PUBLIC = {("api/v1/", "get"), ("api/v1/repos", "get")}


def _path(text: str, pattern, kwargs: dict) -> str:
    """The route's text with each parameter, ``(?P<name>...)`` or ``<converter:name>``, replaced by its sample."""
    names = list(pattern.regex.groupindex)
    missing = set(names) - set(kwargs)
    assert not missing, f"{text}: add a sample for {sorted(missing)} to this test"
    for name in names:
        group = re.search(rf"\(\?P<{name}>", text)
        if group:  # a regex group: up to its balanced closing parenthesis
            depth, end = 0, group.start()
            while True:
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
                if depth == 0:
                    break
            text = text[:group.start()] + str(kwargs[name]) + text[end:]
        else:
            text = re.sub(rf"<(\w+:)?{name}>", str(kwargs[name]), text)
    return "/" + text


@pytest.fixture
def private(alice, bob, api, tmp_path):
    """alice's private objects: a dataset repo with version 1 and alias prod, its blob, a team, a token, a job."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "secret"}\n')
    client = api(alice.token)
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "dataset"}, format="json").status_code == 201
    version = api_push(client, "acme/bot", folder, aliases=["prod"]).json()
    job = Job.objects.create(type="train", owner=alice.user, namespace=Namespace.objects.get(name="acme"),
                             output_name="bot", spec={"type": "train"}, inputs={})
    JobCheckpoint.objects.create(job=job, attempt=1, step=2)
    return {
        "ns": "acme", "name": "bot", "rev": "1", "alias": "prod", "sha256": version["files"][0]["sha256"],
        "team": "acme", "username": "bob", "token_id": ApiToken.objects.filter(user=alice.user).first().pk,
        "job_id": job.id.hex, "step": 2,
    }


NOWHERE = {"ns": "nope", "name": "nope", "rev": "1", "alias": "prod", "sha256": "0" * 64, "team": "nope",
           "username": "nobody", "token_id": 999_999, "job_id": uuid.UUID(int=7).hex, "step": 2}


def _call(client, method: str, path: str):
    response = getattr(client, method)(path, {}, format="json") if method != "get" else client.get(path)
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "detail"} <= set(body["error"]), (method, path, body)
    return response.status_code, body["error"]["code"]


def test_every_route_tells_anonymous_and_outsider_callers_nothing(private, carol, api):
    routes = class_views("api/v1/")
    assert len(routes) >= 20, [r[0] for r in routes]
    checked = 0
    for text, pattern, view in routes:
        for method in METHODS:
            if not hasattr(view, method) or (text, method) in PUBLIC:
                continue
            path = _path(text, pattern, private)
            status, code = _call(api(), method, path)
            assert status in (401, 404), (method, path, status, code)
            if not pattern.regex.groupindex:
                continue  # a collection: carol may list and create her own things there
            seen = _call(api(carol.token), method, path)
            assert 400 <= seen[0] < 500, (method, path, seen)
            assert seen == _call(api(carol.token), method, _path(text, pattern, NOWHERE)), (method, path, seen)
            checked += 1
    assert checked >= 20

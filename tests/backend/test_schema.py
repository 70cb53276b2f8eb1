"""`manage.py check` is clean, and the OpenAPI schema validates and tells the truth.

Truth: list endpoints show their page envelope, every operation its 4xx in the one error
shape, the job request one schema per job type with the protocol's required fields and
choices; and real answers of the hub (reads, writes, errors) match what the schema says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest
import yaml
from django.core.management import call_command
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate

from pefthub.protocol.jobs import QUEUES
from pefthub.protocol.peft import METHODS
from pefthub.protocol.specs import COMBINATIONS, DTYPES, MAX_EVAL_NEW_TOKENS, TrainHyperparameters

PAGINATED = {"/api/v1/repos", "/api/v1/repos/{ns}/{name}/versions", "/api/v1/jobs"}


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    out = tmp_path_factory.mktemp("schema") / "schema.yaml"
    call_command("spectacular", "--file", str(out), "--validate", "--fail-on-warn")
    return yaml.safe_load(out.read_text())


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


def _check_answer(schema: dict, path: str, method: str, response) -> None:
    """``response`` (a test-client response to ``method path``) has a documented status, content type and body."""
    documented = schema["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in documented, f"{method} {path} answered {status}, documented: {sorted(documented)}: {response.content[:300]}"
    if response.status_code == 204:
        return
    content = documented[status]["content"]
    media_type = response["Content-Type"].split(";")[0]
    assert media_type in content, f"{method} {path} {status}: {media_type} not in {list(content)}"
    if media_type != "application/json":
        return
    validator = OAS31Validator({**content[media_type]["schema"], "components": schema["components"]},
                               format_checker=oas31_format_checker)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(response.json())]
    assert not problems, f"{method} {path} {status} does not match its schema: {problems}"


def test_manage_check_is_clean(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "pefthub_server.settings", "PEFTHUB_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pefthub_server.cli", "check", "--fail-level", "WARNING"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_openapi_schema_validates(schema):
    validate(schema)
    assert "/api/v1/repos/{ns}/{name}/versions" in schema["paths"]


def test_lists_document_the_page_envelope_and_page_parameters(schema):
    for path, method, operation in _operations(schema):
        ok = _resolve(schema, operation["responses"].get("200", {}).get("content", {}).get("application/json", {})
                      .get("schema", {}))
        names = {p["name"] for p in operation.get("parameters", [])}
        if method == "GET" and path in PAGINATED:
            assert set(ok["required"]) == {"count", "next", "previous", "results"}, path
            assert ok["properties"]["results"]["type"] == "array" and "null" in ok["properties"]["next"]["type"], path
            assert {"page", "page_size"} <= names and "404" in operation["responses"], path
        else:
            assert "results" not in ok.get("properties", {}) and not {"page", "page_size"} & names, (method, path)


def test_every_operation_documents_its_errors_in_the_error_shape(schema):
    error = _resolve(schema, {"$ref": "#/components/schemas/Error"})
    body = _resolve(schema, error["properties"]["error"])
    assert error["required"] == ["error"] and set(body["required"]) == {"code", "message", "detail"}
    for path, method, operation in _operations(schema):
        responses = operation["responses"]
        has_body = "requestBody" in operation
        expected = {"401", "429", "503"} | ({"400", "413"} if has_body else set()) | ({"404"} if "{" in path else set())
        expected |= {"403"} if method in ("POST", "PUT", "PATCH", "DELETE") else set()
        assert expected <= set(responses), (method, path, sorted(responses))
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["description"], (method, path, status)
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_job_request_is_one_schema_per_job_type_with_the_protocol_rules(schema):
    request = _resolve(schema, schema["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert request["discriminator"]["propertyName"] == "type"
    train = _resolve(schema, {"$ref": request["discriminator"]["mapping"]["train"]})
    merge = _resolve(schema, {"$ref": request["discriminator"]["mapping"]["merge"]})
    evaluate = _resolve(schema, {"$ref": request["discriminator"]["mapping"]["eval"]})
    assert len(request["oneOf"]) == 3
    assert set(train["required"]) == {"type", "base_model", "dataset", "output"}
    assert set(merge["required"]) == {"type", "adapters", "output"}
    assert set(evaluate["required"]) == {"type", "adapter", "dataset"}
    assert evaluate["properties"]["max_new_tokens"]["maximum"] == MAX_EVAL_NEW_TOKENS

    def enum(spec, name):
        return _resolve(schema, spec["properties"][name].get("allOf", [spec["properties"][name]])[0])["enum"]

    assert enum(train, "type") == ["train"] and enum(merge, "type") == ["merge"] and enum(evaluate, "type") == ["eval"]
    assert enum(train, "method") == list(METHODS) and enum(train, "queue") == list(QUEUES)
    assert enum(merge, "combination") == list(COMBINATIONS) and enum(merge, "dtype") == list(DTYPES)
    hyperparameters = _resolve(schema, train["properties"]["hyperparameters"])
    assert list(hyperparameters["properties"]) == [f.name for f in fields(TrainHyperparameters)]
    assert hyperparameters["properties"]["r"] == {"type": "integer", "default": 16, "description": "LoRA rank (lora, qlora, dora)."}
    assert hyperparameters["properties"]["max_steps"]["type"] == ["integer", "null"] and "required" not in hyperparameters
    adapter = _resolve(schema, merge["properties"]["adapters"]["items"])
    assert merge["properties"]["adapters"]["minItems"] == 1 and adapter["required"] == ["ref"]


def test_path_parameter_patterns_match_whole_values_only(schema):
    """A pattern is searched, not matched: `^a|b$` lets `<32 hex>junk` through, which the route refuses."""
    job_id = next(p for p in schema["paths"]["/api/v1/jobs/{job_id}"]["get"]["parameters"] if p["name"] == "job_id")
    pattern = job_id["schema"]["pattern"]
    assert re.search(pattern, "0" * 32) and re.search(pattern, "01234567-89ab-cdef-0123-456789abcdef")
    assert not re.search(pattern, "0" * 32 + "z") and not re.search(pattern, "z" + "0" * 32)


def test_path_parameters_show_the_readme_example(schema):
    parameters = schema["paths"]["/api/v1/repos/{ns}/{name}/aliases/{alias}"]["get"]["parameters"]
    assert {p["name"]: p.get("example") for p in parameters} == {"ns": "acme", "name": "support-bot", "alias": "prod"}


@pytest.fixture
def world(catalogue, alice, api):
    """The catalogue (acme/llama-tiny, public adapter acme/bot@1 with alias prod), a merge job, the path values to reach them."""
    client = api(alice.token)
    job = client.post("/api/v1/jobs", {"type": "merge", "adapters": ["acme/bot@1"], "output": "acme/bot-merged"}, format="json")
    assert job.status_code == 201, job.content
    version = client.get("/api/v1/repos/acme/bot/versions/1").json()
    token_id = client.get("/api/v1/tokens").json()[-1]["id"]
    return client, {"ns": "acme", "name": "bot", "rev": "1", "alias": "prod", "team": "acme", "username": "alice",
                    "job_id": job.json()["id"], "sha256": version["files"][0]["sha256"], "token_id": str(token_id),
                    "step": "1"}


def test_every_read_answers_as_documented(schema, world, api):
    client, values = world
    reads = [(path, op) for path, method, op in _operations(schema) if method == "GET"]
    for path, _ in reads:
        url = path.format(**values)
        _check_answer(schema, path, "GET", client.get(url))
        _check_answer(schema, path, "GET", api("not-a-token").get(url))
        if "{" in path:
            _check_answer(schema, path, "GET", client.get(path.format(**{k: "missing0" for k in values})))
    for path in PAGINATED:
        _check_answer(schema, path, "GET", client.get(path.format(**values), {"page": 99}))


def test_security_says_which_reads_anonymous_callers_may_make(schema, world, api):
    """`acme/bot` is public: the operations whose security allows no token answer it anonymously; the others need one."""
    _, values = world
    for path, method, operation in _operations(schema):
        security = operation["security"]
        assert security in ([{"bearerAuth": []}], [{"bearerAuth": []}, {}]), (method, path, security)
        if method != "GET" or path == "/api/v1/blobs/{sha256}":
            continue
        response = api().get(path.format(**values))
        _check_answer(schema, path, "GET", response)
        if {} in security:
            assert response.status_code == 200, (path, response.content[:200])
        else:
            assert response.status_code in (401, 404), (path, response.status_code)


def test_writes_and_their_refusals_answer_as_documented(schema, world, api):
    client, values = world
    calls = [
        ("POST", "/api/v1/repos", {"namespace": "acme", "name": "more", "kind": "dataset"}),
        ("POST", "/api/v1/repos", {"namespace": "acme", "name": "more", "kind": "dataset"}),  # 409
        ("POST", "/api/v1/repos", {"name": 7}),  # 400
        ("PATCH", "/api/v1/repos/{ns}/{name}", {"description": "A support bot."}),
        ("PUT", "/api/v1/repos/{ns}/{name}/aliases/{alias}", {"version": 1}),
        ("POST", "/api/v1/tokens", {"name": "ci-2", "scope": "read"}),
        ("POST", "/api/v1/teams", {"name": "acme"}),  # 409
        ("POST", "/api/v1/teams/{team}/members", {"username": "alice"}),  # 409
        ("POST", "/api/v1/jobs/{job_id}/cancel", None),
        ("POST", "/api/v1/jobs/{job_id}/cancel", None),  # 409: it ended
        ("POST", "/api/v1/jobs", {"type": "train", "output": "acme/x"}),  # 400
        ("POST", "/api/v1/jobs/{job_id}/claim", {"worker": "w"}),  # 403: not a worker token
        ("DELETE", "/api/v1/repos/{ns}/{name}", None),  # 403: a write token
        ("DELETE", "/api/v1/tokens/{token_id}", None),
    ]
    for method, path, body in calls:
        response = client.generic(method, path.format(**values), *([json.dumps(body), "application/json"] if body else []))
        _check_answer(schema, path, method, response)


def test_docs_page_is_served_offline(client, db):
    response = client.get("/api/docs/")
    assert response.status_code == 200 and b"swagger" in response.content.lower()
    assert b"cdn.jsdelivr" not in response.content


def test_deploy_check_is_clean_with_the_production_flag(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "pefthub_server.settings", "PEFTHUB_DATA_DIR": str(tmp_path),
           "PEFTHUB_SECURE": "1", "DJANGO_SECRET_KEY": "x" * 20 + "-production-grade-secret-0123456789-abcdefghijkl",
           "DJANGO_ALLOWED_HOSTS": "hub.example.com"}
    result = subprocess.run([sys.executable, "-m", "pefthub_server.cli", "check", "--deploy", "--fail-level", "WARNING"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "no issues" in result.stdout, result.stdout + result.stderr

"""docker-compose.yml is a valid Compose file (the Compose Specification's own schema, no Docker engine needed)
and the stack it describes is the production topology: migrate first, `serve`, workers on their queues, secrets
without defaults."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from tests.deploy.manifests import COMPOSE, DEPLOY, OPERATIONS, ROLES, ROOT, compose_raw, interpolate, variables_in

SCHEMA = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN")


def required_variables() -> set[str]:
    return {v.name for v in variables_in(COMPOSE.read_text()) if v.op in (":?", "?")}


def compose(**env: str) -> dict:
    """The file as Compose sees it once interpolated: each required variable set to an example value."""
    return interpolate(compose_raw(), {name: f"example-{name.lower()}" for name in required_variables()} | env)


def test_the_compose_file_is_valid_against_the_compose_specification():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_refuses_what_compose_refuses():
    """The check can fail: a misspelt key and a bad depends_on condition are errors under the vendored schema."""
    validator = jsonschema.Draft7Validator(SCHEMA)
    broken = compose()
    broken["services"]["api"]["healthcheck"] = {"intervall": "10s"}
    broken["services"]["beat"]["depends_on"]["migrate"]["condition"] = "service_finished"
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("intervall" in m for m in messages) and any("service_finished" in m for m in messages), messages


def test_every_variable_has_a_default_or_stops_compose_with_a_message_and_is_documented():
    guide = OPERATIONS.read_text()
    for var in variables_in(COMPOSE.read_text()):
        assert var.op in (":-", "-", ":?", "?"), f"${{{var.name}}} has neither a default (:-) nor a message (:?)"
        if var.op in (":?", "?"):
            assert var.arg.strip(), f"${{{var.name}}} stops compose without saying what to set"
        assert f"`{var.name}`" in guide, f"{var.name} is not documented in docs/operations.md"


def test_secrets_have_no_defaults():
    """No password, secret key or token ships with a usable value: compose stops until one is set."""
    for var in variables_in(COMPOSE.read_text()):
        if SECRET_NAME.search(var.name):
            assert var.op in (":?", "?") or not var.arg, f"${{{var.name}}} defaults to {var.arg!r}"
    assert {"DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"} <= required_variables()
    for name, service in compose_raw()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                literal = re.sub(r"\$\{[^}]*\}", "", str(value))
                assert literal == "", f"{name}: {key} holds a literal value {literal!r}"
    for name in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        with pytest.raises(KeyError, match=f"{name}: set {name}"):
            compose(**{name: ""})


def test_every_dependency_names_a_service_and_none_is_circular():
    services = compose()["services"]
    graph = {name: list(service.get("depends_on") or []) for name, service in services.items()}
    for name, needs in graph.items():
        assert set(needs) <= set(services), f"{name} depends on {set(needs) - set(services)}"

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"circular depends_on: {' -> '.join((*path, name))}"
        for need in graph[name]:
            visit(need, (*path, name))

    for name in graph:
        visit(name, ())


def test_the_production_topology():
    services = compose()["services"]
    assert services["migrate"]["command"][:2] == ["pefthub-server", "migrate"]
    for role in ("api", "beat"):
        assert services[role]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, role
    api = services["api"]
    assert api["command"][:2] == ["pefthub-server", "serve"], "the API runs the production server, not `up`"
    assert "healthcheck" not in api, "the API keeps its image's HEALTHCHECK (GET /healthz: tests/deploy/test_images.py)"
    for role in ("migrate", "beat"):  # the same image, no HTTP server: never reported unhealthy
        assert services[role]["healthcheck"] == {"disable": True}, role
    for role in ("worker-gpu", "worker-cpu"):
        assert services[role]["depends_on"]["api"] == {"condition": "service_healthy"}, role
    assert services["worker-gpu"]["command"][-2:] == ["--queues", "gpu"]
    assert services["worker-cpu"]["command"][-2:] == ["--queues", "cpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"]


def test_each_role_runs_the_image_of_its_dockerfile():
    services = compose()["services"]
    built = {s["image"]: s["build"] for s in services.values() if "build" in s}
    for role, (image, service, _) in ROLES.items():
        build = built[services[service]["image"]]
        assert build["dockerfile"] == f"deploy/Dockerfile.{image}", role
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_third_party_images_are_pinned_to_exact_versions():
    """postgres:16.15-bookworm, not postgres:16: an upgrade is a change to this file, never a surprise.
    (PostgreSQL's releases have two parts since 10; the others' three; MinIO's are dates.)"""
    services = compose()["services"]
    ours = {s["image"] for s in services.values() if "build" in s}
    for name, service in services.items():
        if service["image"] not in ours:
            tag = service["image"].rpartition(":")[2]
            assert re.fullmatch(r"\d+\.\d+(\.\d+)?(-[a-z0-9]+)?|RELEASE\.[0-9T-]+Z", tag), f"{name}: {service['image']}"

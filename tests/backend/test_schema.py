"""`manage.py check` is clean and the OpenAPI schema validates."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from django.core.management import call_command
from openapi_spec_validator import validate


def test_manage_check_is_clean(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "pefthub_server.settings", "PEFTHUB_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pefthub_server.cli", "check", "--fail-level", "WARNING"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_openapi_schema_validates(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(out), "--validate", "--fail-on-warn")
    schema = yaml.safe_load(out.read_text())
    validate(schema)
    assert "/api/v1/repos/{ns}/{name}/versions" in schema["paths"]


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

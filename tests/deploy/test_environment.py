"""The deploy files and the code agree: every variable a manifest sets is one the code reads, compose and
Kubernetes give each role the same variables and the same command, and every command line is one the
programs accept."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import (
    K8S_EXAMPLE,
    LIBRARY_ENV,
    ROLES,
    code_env_names,
    compose_raw,
    find,
    kustomize_build,
    library_names_variable,
    pod_spec,
)


def compose_env(role: str) -> dict[str, str]:
    return dict(compose_raw()["services"][ROLES[role][1]].get("environment") or {})


def k8s_env_names(role: str) -> set[str]:
    """The variables the role's main container gets: its env entries and every key of its ConfigMaps and Secrets."""
    kind, name = ROLES[role][2].split("/")
    docs = kustomize_build(K8S_EXAMPLE)
    container = pod_spec(find(docs, kind, name))["containers"][0]
    names = {entry["name"] for entry in container.get("env", [])}
    for source in container.get("envFrom", []):
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        names |= set(next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == ref["name"])["data"])
    return names


def k8s_command(role: str) -> list[str]:
    kind, name = ROLES[role][2].split("/")
    return pod_spec(find(kustomize_build(K8S_EXAMPLE), kind, name))["containers"][0]["command"]


def test_the_scan_finds_what_the_code_reads():
    """The scan behind the next test sees settings (env_*), the workers (os.environ) and the SDK (ENV_* constants)."""
    assert {"DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY_FILE", "DATABASE_URL", "CELERY_BROKER_URL", "PEFTHUB_URL",
            "PEFTHUB_TOKEN", "OMP_NUM_THREADS"} <= code_env_names()
    assert "PEFTHUB_NO_SUCH_SETTING" not in code_env_names()


@pytest.mark.parametrize("name,package", sorted(LIBRARY_ENV.items()))
def test_variables_left_to_libraries_are_read_by_them(name, package):
    assert library_names_variable(package, name), f"{package} does not read {name}"


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_a_manifest_sets_is_read_by_the_code(role):
    known = code_env_names() | set(LIBRARY_ENV)
    for where, names in (("docker-compose.yml", set(compose_env(role))), ("deploy/k8s", k8s_env_names(role))):
        unread = names - known
        assert not unread, f"{where} sets {sorted(unread)} for {role}, which nothing reads (a typo, or a setting removed?)"


@pytest.mark.parametrize("role", ROLES)
def test_compose_and_kubernetes_agree(role):
    assert set(compose_env(role)) == k8s_env_names(role), role
    assert compose_raw()["services"][ROLES[role][1]]["command"] == k8s_command(role), role


def _help(program: str, *args: str, tmp_path: Path) -> str:
    env = {**os.environ, "PEFTHUB_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "DJANGO_SECRET_KEY": "help-only", "DJANGO_SETTINGS_MODULE": "pefthub_server.settings"}
    result = subprocess.run([str(Path(sys.executable).with_name(program)), *args, "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("role", ROLES)
def test_every_command_line_is_one_the_program_accepts(role, tmp_path):
    """`pefthub-server serve --host --port`, `pefthub-worker --queues`...: each subcommand exists and takes the options."""
    commands = [compose_raw()["services"][ROLES[role][1]]["command"]]
    kind, name = ROLES[role][2].split("/")
    for container in pod_spec(find(kustomize_build(K8S_EXAMPLE), kind, name)).get("initContainers", []):
        commands += [c.split() for c in re.findall(r"pefthub-server [a-z_]+ --[a-z-]+", container["command"][-1])]
    for command in commands:
        program, rest = command[0], command[1:]
        sub = [rest[0]] if program == "pefthub-server" else []
        usage = _help(program, *sub, tmp_path=tmp_path)
        for option in (word for word in rest if word.startswith("--")):
            assert re.search(rf"{re.escape(option)}\b", usage), f"{' '.join(command)}: {option} is not an option"

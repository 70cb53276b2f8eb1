"""What a job token may do in the registry: read its job's pinned inputs, push its job's result.

Each rule is a view's ``job_token_rule`` (see :class:`pefthub_server.core.auth.JobTokenPolicy`):
``rule(request, job, **url_kwargs) -> bool``, called before the view runs. ``job`` is the
jobs app's Job, reached through the token; the registry reads it by duck typing
(``output``, ``output_kind``, ``makes_version``, ``pinned_inputs()``, ``inputs``, ``spec``) and never imports
the jobs app. Anything a rule does not allow is a 403 with the policy's message.
"""

from __future__ import annotations

import uuid

from pefthub.protocol.repos import PRIVATE
from pefthub_server.core.auth import job_token
from pefthub_server.core.errors import PermissionDenied
from pefthub_server.registry.storage import get_blob_store


def job_of(request):
    """The job whose token signs the request, if one does: its push possesses only what the job reads."""
    token = job_token(request)
    return token.job if token is not None else None


def _pins_of(job, ns: str, name: str) -> list[dict]:
    return [pin for pin in job.pinned_inputs() if pin["repo"] == f"{ns}/{name}"]


def _pinned_forms(pin: dict) -> set[str]:
    """The revisions that name exactly this pinned version: its number and its digest."""
    return {str(pin["number"]), pin["digest"]}


def repo_detail(request, job, ns: str, name: str) -> bool:
    """GET of a pinned input's repository or of the job's output repository."""
    return request.method in ("GET", "HEAD") and (bool(_pins_of(job, ns, name)) or f"{ns}/{name}" == job.output)


def version_detail(request, job, ns: str, name: str, rev: str) -> bool:
    """GET of a pinned input by its pinned number or digest (not `latest`, not another version)."""
    return request.method in ("GET", "HEAD") and any(rev in _pinned_forms(pin) for pin in _pins_of(job, ns, name))


def upload(request, job, ns: str, name: str) -> bool:
    """Negotiating a push to the job's output repository (an eval job pushes nothing); one that may commit
    (``commit``) as :func:`commit` says."""
    if request.method != "POST" or not job.makes_version or f"{ns}/{name}" != job.output:
        return False
    body = request.data if isinstance(request.data, dict) else {}
    fields = body.get("commit")
    if fields is None:
        return True
    # the repository's fields are the negotiation's own, the version's are the commit's (as the view reads them)
    fields = fields if isinstance(fields, dict) else {}
    return _result_allowed(job, {**body, "job": fields.get("job"), "aliases": fields.get("aliases")})


def _same_job(value, job) -> bool:
    try:
        return uuid.UUID(str(value)) == job.pk
    except ValueError:
        return False


def commit(request, job, ns: str, name: str) -> bool:
    """Committing the job's result (``job=<id>``) to its output repository, as the job's spec says.

    The commit may create the repository (private, of the job's output kind); it may set
    only the aliases the job's spec names, and file an adapter only against the pinned base.
    """
    if request.method != "POST" or not job.makes_version or f"{ns}/{name}" != job.output:
        return False
    return _result_allowed(job, request.data if isinstance(request.data, dict) else {})


def _result_allowed(job, body: dict) -> bool:
    """A commit's fields (``body``) are the job's result as its spec says; a 403 naming what is not."""
    if not _same_job(body.get("job"), job):
        raise PermissionDenied(f"A job token commits only its job's result: send \"job\": \"{job.pk.hex}\".")
    allowed = set(job.spec.get("aliases") or [])
    extra = sorted(set(body.get("aliases") or []) - allowed)
    if extra:
        raise PermissionDenied(
            f"A job token may set only the aliases its job's spec names ({', '.join(sorted(allowed)) or 'none'}), "
            f"not {', '.join(extra)}.")
    base = body.get("base_model")
    pinned_base = job.inputs.get("base_model")
    if base is not None and not (pinned_base and base in {f"{pinned_base['repo']}@{r}" for r in _pinned_forms(pinned_base)}):
        raise PermissionDenied(f"A job token files its result only against the job's pinned base, not `{base}`.")
    if body.get("visibility") not in (None, PRIVATE) or body.get("kind") not in (None, job.output_kind):
        raise PermissionDenied(
            f"A job token creates its output only as a private {job.output_kind} repository; the owner changes it after.")
    return True


def signed_blob(request, job, sha256: str) -> bool:
    """A blob URL the hub signed: the signature grants it, never the token (local backend only).

    A download's signature is checked here, since without one the view would fall back to
    what the owner may read. An upload only needs to carry one: the view accepts nothing
    but a valid upload URL.
    """
    q = request.query_params
    if request.method == "PUT":
        return bool(q.get("sig"))
    store = get_blob_store()
    return store.serves_bytes and store.check_signature(sha256, "GET", q.get("expires"), q.get("sig"))

"""Registry endpoints. Reads go through selectors, every state change through one service call."""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import prefetch_related_objects
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from pefthub.protocol.jobs import ACTIVE
from pefthub.protocol.refs import LATEST, check_alias, is_sha256
from pefthub_server import __version__
from pefthub_server.core.auth import require_scope
from pefthub_server.core.errors import AuthenticationFailed, NotFound, PermissionDenied, TooLarge, ValidationFailed
from pefthub_server.core.http import base_url, bytes_response, choice_param, validated
from pefthub_server.core.models import ApiToken
from pefthub_server.core.pagination import PAGE_PARAMETERS, GroupedRows, Pagination, paginated
from pefthub_server.core.schema import ANONYMOUS_OK, errors
from pefthub_server.registry import aliases, blobs, lineage, push, repositories, selectors
from pefthub_server.registry.api import job_token_rules
from pefthub_server.registry.api import serializers as s
from pefthub_server.registry.api.page_cache import cached_page
from pefthub_server.registry.models import Alias, AliasMove, Membership, Repository, Version
from pefthub_server.registry.storage import CHECKPOINT, get_blob_store, upload_signer


def _repo_for_change(request, ns: str, name: str, *, scope: str, role: str, action: str) -> Repository:
    """A repository the caller may change. Unseen repos are 404 before any scope or role check (no leak)."""
    repo = selectors.repository_get(user=request.user, namespace=ns, name=name)
    require_scope(request, scope, action)
    selectors.require_namespace_role(request.user, repo.namespace, role, action=f"{action} in `{repo.full_name}`")
    return repo


class ApiRootView(APIView):
    @extend_schema(summary="API root: server version and links", responses=s.RootSerializer, auth=ANONYMOUS_OK)
    def get(self, request):
        links = {name: reverse(f"api:{name}", request=request) for name in ("repos", "teams", "tokens", "whoami")}
        links["jobs"] = request.build_absolute_uri("/api/v1/jobs")
        links["schema"] = request.build_absolute_uri("/api/schema/")
        links["docs"] = request.build_absolute_uri("/api/docs/")
        return Response({"version": __version__, "links": links})


class WhoAmIView(APIView):
    @extend_schema(summary="The caller, its teams and its token", responses=s.WhoAmISerializer)
    def get(self, request):
        require_scope(request, "read", "see who you are")
        user = request.user
        teams = Membership.objects.filter(user=user).select_related("namespace").order_by("namespace__name")
        token = request.auth if isinstance(request.auth, ApiToken) else None
        return Response(
            {
                "username": user.username,
                "is_staff": user.is_staff,
                "teams": [{"name": m.namespace.name, "role": m.role} for m in teams],
                "token": s.TokenSerializer(token).data if token else None,
            }
        )


# --- repositories --------------------------------------------------------------------


class RepoListView(APIView):
    @extend_schema(
        summary="List repositories the caller can read", operation_id="v1_repos_list", auth=ANONYMOUS_OK,
        parameters=[OpenApiParameter("kind", str, enum=Repository.Kind.values)]
        + [OpenApiParameter(name, str) for name in ("namespace", "base_model", "peft_type", "search")]
        + PAGE_PARAMETERS,
        responses={200: paginated(s.RepoSerializer), **errors(404)},
    )
    def get(self, request):
        return cached_page(request, lambda: self._page(request))

    def _page(self, request) -> tuple[bytes, str]:
        """The page's bytes and content type, as DRF's renderer writes them."""
        q = request.query_params
        qs = selectors.repository_list(
            user=request.user, kind=choice_param(request, "kind", Repository.Kind.values), namespace=q.get("namespace"),
            base_model=q.get("base_model"),
            peft_type=q.get("peft_type"), search=q.get("search"),
        )
        paginator = Pagination()
        # rows paged by owner, so a page is read through the (namespace, name) index instead of sorting them all
        rows = GroupedRows(qs, columns=s.RepoSerializer.row_columns)
        page = paginator.paginate_queryset(rows, request, view=self)
        data = paginator.get_paginated_response([s.RepoSerializer.render_row(row) for row in page]).data
        renderer = request.accepted_renderer
        body = renderer.render(data, request.accepted_media_type, self.get_renderer_context())
        return body, renderer.media_type if renderer.charset is None else f"{renderer.media_type}; charset={renderer.charset}"

    @extend_schema(summary="Create a repository", request=s.RepoCreateSerializer,
                   responses={201: s.RepoSerializer, **errors(404, 409)})
    def post(self, request):
        require_scope(request, "write", "create repositories")
        data = validated(s.RepoCreateSerializer, request.data)
        repo = repositories.repository_create(user=request.user, **data)
        return Response(s.RepoSerializer(repo).data, status=201)


class RepoDetailView(APIView):
    job_token_rule = staticmethod(job_token_rules.repo_detail)

    @extend_schema(summary="A repository", responses=s.RepoSerializer, auth=ANONYMOUS_OK)
    def get(self, request, ns, name):
        repo = selectors.repository_get(user=request.user, namespace=ns, name=name)
        return Response(s.RepoSerializer(repo).data)

    @extend_schema(summary="Update description or visibility", request=s.RepoUpdateSerializer, responses=s.RepoSerializer)
    def patch(self, request, ns, name):
        repo = _repo_for_change(request, ns, name, scope="write", role="write", action="update repositories")
        data = validated(s.RepoUpdateSerializer, request.data)
        repo = repositories.repository_update(user=request.user, repo=repo, **data)
        return Response(s.RepoSerializer(repo).data)

    @extend_schema(summary="Delete a repository (namespace admin, admin-scope token)", responses={204: None, **errors(409)})
    def delete(self, request, ns, name):
        repo = _repo_for_change(request, ns, name, scope="admin", role="admin", action="delete repositories")
        repositories.repository_delete(user=request.user, repo=repo)
        return Response(status=204)


class UploadView(APIView):
    job_token_rule = staticmethod(job_token_rules.upload)

    @extend_schema(
        summary="Negotiate a push: which blobs are missing and where to upload them; with `commit`, commit at once "
                "when none is",
        request=s.UploadRequestSerializer,
        responses={200: s.UploadResponseSerializer, 201: s.UploadResponseSerializer},
    )
    def post(self, request, ns, name):
        target = _push_target(request, ns, name)
        options = validated(s.UploadOptionsSerializer, request.data)
        files = request.data.get("files") if isinstance(request.data, dict) else None
        commit = options.pop("commit", None)
        if commit is not None and commit.get("job") is not None:
            commit["job"] = _job_for_result(request, commit["job"])
        plan = push.upload_negotiate(user=request.user, target=target, files=files, base_url=base_url(request),
                                     job=job_token_rules.job_of(request), commit=commit, **options)
        data = {"missing": plan.missing, "present": plan.present}
        if plan.version is None:
            return Response(data)
        data["version"] = version_detail_data(request, plan.version, created=plan.created)
        return Response(data, status=201 if plan.created else 200)


def _push_target(request, ns: str, name: str) -> push.PushTarget:
    """Where a push writes. With `kind` in the body it may be a repository to create; unseen
    repositories and namespaces are 404 before any scope or role check (no leak)."""
    create = isinstance(request.data, dict) and request.data.get("kind") is not None
    target = push.push_target(user=request.user, namespace=ns, name=name, create=create)
    require_scope(request, "write", "push")
    selectors.require_namespace_role(request.user, target.namespace, "write", action=f"push to `{target.full_name}`",
                                     role=target.role)
    return target


# --- versions ------------------------------------------------------------------------


def version_detail_data(request, version: Version, *, created: bool | None = None) -> dict:
    store = get_blob_store()
    root = base_url(request)
    prefetch_related_objects([version], selectors.VERSION_ALIASES)
    data = s.VersionSerializer(version).data
    if created is not None:
        data["created"] = created
    data["files"] = [
        {
            "path": f.path, "sha256": f.blob_id, "size": f.size,
            "url": store.download_url(f.blob_id, base_url=root, filename=f.path.rsplit("/", 1)[-1],
                                      expires=settings.PEFTHUB_URL_TTL),
        }
        for f in version.files.all()  # by path (VersionFile's ordering); a commit's answer has them already
    ]
    return data


class VersionListView(APIView):
    job_token_rule = staticmethod(job_token_rules.commit)

    @extend_schema(summary="List versions, newest first", operation_id="v1_repos_versions_list", auth=ANONYMOUS_OK,
                   parameters=PAGE_PARAMETERS,
                   responses={200: paginated(s.VersionSerializer), **errors(404)})
    def get(self, request, ns, name):
        repo = selectors.repository_get(user=request.user, namespace=ns, name=name)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.version_list(repo=repo), request, view=self)
        rows = s.VersionSerializer(page, many=True).data
        readable = selectors.readable_names(request.user, set().union(*(lineage.named(v.metadata) for v in page)))
        for row in rows:
            row["metadata"] = lineage.shown(row["metadata"], readable)
        return paginator.get_paginated_response(rows)

    @extend_schema(
        summary="Commit a version from uploaded blobs (200 and created=false if identical to latest)",
        request=s.VersionCreateSerializer, responses={201: s.VersionDetailSerializer, 200: s.VersionDetailSerializer},
    )
    def post(self, request, ns, name):
        target = _push_target(request, ns, name)
        data = validated(s.VersionCreateSerializer, request.data)
        if data.get("job") is not None:
            data["job"] = _job_for_result(request, data["job"])
        version, created = push.version_create(user=request.user, target=target, **data)
        return Response(version_detail_data(request, version, created=created), status=201 if created else 200)


def _job_for_result(request, job_id):
    """The running job whose token made this request: only it may commit the job's result."""
    # A job token knows its job (jobs.Job.token's reverse side): no import of the jobs app.
    job = getattr(request.auth, "job", None) if isinstance(request.auth, ApiToken) else None
    if job is None or job.pk != job_id or job.status not in ACTIVE:
        raise PermissionDenied(f"Only the token of running job {job_id.hex} may commit its result.")
    return job


class VersionDetailView(APIView):
    job_token_rule = staticmethod(job_token_rules.version_detail)

    @extend_schema(summary="A version's manifest with download URLs", responses=s.VersionDetailSerializer,
                   auth=ANONYMOUS_OK)
    def get(self, request, ns, name, rev):
        version = selectors.version_get(user=request.user, namespace=ns, name=name, revision=rev)
        data = version_detail_data(request, version)
        # read only when there are some (the version's query says so): most versions have none
        evaluations = list(version.evaluations.order_by("-created_at", "-id")) if getattr(version, "evaluated", True) else []
        # one query for every repository the answer names besides this one (none when it names none)
        readable = selectors.readable_names(request.user, {e.dataset_repo for e in evaluations} | lineage.named(version.metadata))
        data["metadata"] = lineage.shown(data["metadata"], readable)
        data["evaluations"] = s.EvaluationSerializer(evaluations, many=True, context={"readable": readable}).data
        return Response(data)


# --- aliases -------------------------------------------------------------------------


def _alias_data(alias: Alias) -> dict:
    return {
        "name": alias.name, "version": alias.version.number, "updated_at": alias.updated_at,
        "updated_by": alias.updated_by.username if alias.updated_by_id else None,
    }


class AliasListView(APIView):
    @extend_schema(summary="Aliases of a repository", responses=s.AliasSerializer(many=True), auth=ANONYMOUS_OK)
    def get(self, request, ns, name):
        repo = selectors.repository_get(user=request.user, namespace=ns, name=name)
        rows = [_alias_data(a) for a in repo.aliases.select_related("version", "updated_by")]
        if repo.latest_number:
            rows.insert(0, {"name": LATEST, "version": repo.latest_number, "updated_at": None, "updated_by": None})
        return Response(rows)


class AliasDetailView(APIView):
    def _alias(self, repo, alias):
        check_alias(alias)
        found = repo.aliases.select_related("version", "updated_by").filter(name=alias).first()
        if found is None:
            raise NotFound(f"`{repo.full_name}` has no alias `{alias}`.")
        return found

    @extend_schema(summary="An alias and its history", responses=s.AliasDetailSerializer, auth=ANONYMOUS_OK)
    def get(self, request, ns, name, alias):
        repo = selectors.repository_get(user=request.user, namespace=ns, name=name)
        data = _alias_data(self._alias(repo, alias))
        moves = AliasMove.objects.filter(repository=repo, alias=alias).select_related("moved_by")
        data["history"] = [
            {"from": m.from_number, "to": m.to_number, "moved_at": m.moved_at,
             "moved_by": m.moved_by.username if m.moved_by_id else None}
            for m in moves
        ]
        return Response(data)

    @extend_schema(summary="Set or move an alias", request=s.AliasMoveSerializer, responses=s.AliasSerializer)
    def put(self, request, ns, name, alias):
        repo = _repo_for_change(request, ns, name, scope="write", role="write", action="move aliases")
        revision = request.data.get("version") if isinstance(request.data, dict) else None
        if revision is None or isinstance(revision, bool):
            raise ValidationFailed('Send {"version": <number, alias or sha256:digest>}.')
        moved = aliases.alias_set(user=request.user, repo=repo, alias=alias, revision=str(revision))
        return Response(_alias_data(moved))

    @extend_schema(summary="Delete an alias", responses={204: None})
    def delete(self, request, ns, name, alias):
        repo = _repo_for_change(request, ns, name, scope="write", role="write", action="delete aliases")
        aliases.alias_delete(user=request.user, repo=repo, alias=alias)
        return Response(status=204)


# --- blobs (local backend) -----------------------------------------------------------

_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


BLOB_PARAMETERS = [
    OpenApiParameter("expires", int, description="Signed URLs: expiry (Unix time)"),
    OpenApiParameter("sig", str, description="Signed URLs: signature"),
]
UPLOAD_PARAMETERS = [*BLOB_PARAMETERS, OpenApiParameter("user", int, description="Upload URLs: the user they were handed to"),
                     OpenApiParameter("purpose", str, enum=[CHECKPOINT],
                                      description="Upload URLs of a job checkpoint (they prove nothing to a push)")]


class BlobView(APIView):
    parser_classes: list = []
    job_token_rule = staticmethod(job_token_rules.signed_blob)

    def _store(self, sha256):
        store = get_blob_store()
        if not store.serves_bytes or not is_sha256(sha256):
            raise NotFound("Blob not found.")
        return store

    def _readable(self, request, store, sha256, method):
        q = request.query_params
        if q.get("sig") and store.check_signature(sha256, method, q.get("expires"), q.get("sig")):
            return True
        return request.user.is_authenticated and selectors.blob_readable(user=request.user, sha256=sha256)

    @extend_schema(
        summary="Download a blob (local backend; signed URL or token; Range supported)", auth=ANONYMOUS_OK,
        parameters=BLOB_PARAMETERS + [OpenApiParameter("filename", str, description="Name to save the download as")],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                   (206, "application/octet-stream"): OpenApiTypes.BINARY, **errors(416)},
    )
    def get(self, request, sha256):
        store = self._store(sha256)
        size = store.stat(sha256)
        if size is None or not self._readable(request, store, sha256, "GET"):
            raise NotFound("Blob not found.")
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"', "Cache-Control": "private, max-age=31536000, immutable"}
        filename = request.query_params.get("filename", "")
        if _FILENAME_RE.match(filename):
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return bytes_response(request, size=size, headers=headers, path=store.path(sha256))

    @extend_schema(
        summary="Upload a blob (local backend; only to the signed URL a push negotiation handed out)",
        parameters=UPLOAD_PARAMETERS,
        request={"application/octet-stream": OpenApiTypes.BINARY}, responses={201: s.BlobSerializer}, auth=ANONYMOUS_OK,
    )
    def put(self, request, sha256):
        store = self._store(sha256)
        q = request.query_params
        # The one way in: the URL a negotiation signed for its user; the bytes then count as that user's upload.
        uploader, checkpoint = q.get("user", ""), q.get("purpose") == CHECKPOINT
        if not (uploader.isdigit() and store.check_signature(sha256, "PUT", q.get("expires"), q.get("sig"),
                                                             upload_signer(uploader, checkpoint))
                and get_user_model().objects.filter(pk=int(uploader), is_active=True).exists()):
            refused = AuthenticationFailed if not request.user.is_authenticated else PermissionDenied
            raise refused("This upload URL is not valid (or has expired); a token is no substitute: upload to the "
                          "URL that POST /api/v1/repos/{namespace}/{name}/uploads answered with.", code="invalid_upload_url")
        length = request.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and expected > settings.PEFTHUB_MAX_FILE_SIZE:
            raise TooLarge(f"Blob of {expected} bytes exceeds PEFTHUB_MAX_FILE_SIZE ({settings.PEFTHUB_MAX_FILE_SIZE}).")
        size = store.save_stream(sha256, request._request, expected)
        blobs.blob_uploaded(user_id=int(uploader), sha256=sha256, size=size, checkpoint=checkpoint)
        return Response({"sha256": sha256, "size": size}, status=201)

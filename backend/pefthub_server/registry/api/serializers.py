"""Request and response shapes of the registry API (also the OpenAPI schema).

The shapes a list renders by the hundred (repositories, versions) declare their fields for the
schema and render with one plain function each: DRF's per-field machinery was most of a page's
time. Their times are rendered by :func:`iso_utc`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rest_framework import serializers

from pefthub_server.core.models import USER_SCOPES, ApiToken, Scope
from pefthub_server.core.tokens import MAX_TOKEN_DAYS
from pefthub_server.registry.models import Membership, Repository, Role
from pefthub_server.registry.serving import serving_facts

_ZERO = timedelta(0)


def iso_utc(value: datetime | None) -> str | None:
    """A stored time as DRF's DateTimeField writes it in the API's time zone (UTC): ISO 8601 with `Z`.

    The database hands times back in UTC, so there is nothing to convert (DRF looks the time zone up
    and converts every value: a third of a list page's time); any other offset is converted.
    """
    if value is None:
        return None
    if value.utcoffset() != _ZERO:
        value = value.astimezone(UTC)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class RepoSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="full_name", read_only=True)
    namespace = serializers.CharField(source="namespace.name", read_only=True)
    base_model = serializers.CharField(read_only=True, allow_null=True, help_text="Adapters: `namespace/name` of their base")
    peft_type = serializers.CharField(read_only=True, allow_null=True)
    latest_version = serializers.IntegerField(source="latest_number", read_only=True, allow_null=True)

    class Meta:
        model = Repository
        fields = [
            "id", "namespace", "name", "kind", "visibility", "description", "base_model", "peft_type",
            "latest_version", "created_at", "updated_at",
        ]

    #: what :meth:`render_row` renders: a list reads these columns as tuples (``values_list``), no model instances
    row_columns = ("namespace__name", "name", "kind", "visibility", "description", "base_model__namespace__name",
                   "base_model__name", "peft_type", "latest_number", "created_at", "updated_at")

    def to_representation(self, repo) -> dict:
        base = repo.base_model
        return self.render_row((
            repo.namespace.name, repo.name, repo.kind, repo.visibility, repo.description,
            base.namespace.name if base is not None else None, base.name if base is not None else None,
            repo.peft_type, repo.latest_number, repo.created_at, repo.updated_at))

    @staticmethod
    def render_row(row: tuple) -> dict:
        """One repository as the API shows it, from its :attr:`row_columns`."""
        namespace, name, kind, visibility, description, base_namespace, base_name, peft_type, latest, created, updated = row
        return {
            "id": f"{namespace}/{name}", "namespace": namespace, "name": name, "kind": kind, "visibility": visibility,
            "description": description,
            "base_model": f"{base_namespace}/{base_name}" if base_name is not None else None,
            "peft_type": peft_type or None, "latest_version": latest,
            "created_at": iso_utc(created), "updated_at": iso_utc(updated),
        }


class RepoCreateSerializer(serializers.Serializer):
    namespace = serializers.CharField(required=False, allow_null=True)
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=Repository.Kind.choices)
    visibility = serializers.ChoiceField(choices=Repository.Visibility.choices, default=Repository.Visibility.PRIVATE)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    base_model = serializers.CharField(required=False, allow_null=True)


class RepoUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    visibility = serializers.ChoiceField(choices=Repository.Visibility.choices, required=False)


class FileSpecSerializer(serializers.Serializer):
    path = serializers.CharField()
    sha256 = serializers.CharField()
    size = serializers.IntegerField(min_value=0)


class PushRepoSerializer(serializers.Serializer):
    """What a push says about its repository; with `kind`, a push may create it with its first version."""

    kind = serializers.ChoiceField(
        choices=Repository.Kind.choices, required=False,
        help_text="What this push is. With it, a missing repository is created by the commit (a refused commit "
                  "creates nothing); an existing repository must be of this kind.")
    visibility = serializers.ChoiceField(
        choices=Repository.Visibility.choices, required=False,
        help_text="Only when the push creates the repository (default private).")
    description = serializers.CharField(required=False, allow_blank=True,
                                        help_text="Only when the push creates the repository.")


class CommitFieldsSerializer(serializers.Serializer):
    """What a commit says about the version it makes."""

    message = serializers.CharField(required=False, allow_blank=True, default="")
    metadata = serializers.DictField(required=False, default=dict)
    aliases = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    job = serializers.UUIDField(required=False, allow_null=True, help_text="Only with that running job's token")


class UploadOptionsSerializer(PushRepoSerializer):
    base_model = serializers.CharField(required=False, allow_null=True,
                                       help_text="An adapter's base, checked before any byte moves")
    commit = CommitFieldsSerializer(
        required=False,
        help_text="Commit at once when nothing is missing: the answer then holds the version (201, or 200 with "
                  "`created` false when the files are the latest version's). With blobs missing, it answers as "
                  "without it; upload them, then POST …/versions.")


class UploadRequestSerializer(UploadOptionsSerializer):
    files = FileSpecSerializer(many=True)


class UploadTargetSerializer(serializers.Serializer):
    method = serializers.CharField()
    url = serializers.URLField()
    headers = serializers.DictField(child=serializers.CharField())


class MissingBlobSerializer(serializers.Serializer):
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    upload = UploadTargetSerializer()


class VersionCreateSerializer(PushRepoSerializer, CommitFieldsSerializer):
    files = serializers.ListField(child=serializers.DictField())
    base_model = serializers.CharField(required=False, allow_null=True)


class BaseRefSerializer(serializers.Serializer):
    """A version pinned by repository, number and digest."""

    repo = serializers.CharField()
    number = serializers.IntegerField()
    digest = serializers.CharField(help_text="sha256:<64 hex>")


class FileSerializer(serializers.Serializer):
    path = serializers.CharField()
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    url = serializers.URLField()


class VersionSerializer(serializers.Serializer):
    """Rendered from a Version; `files` only when the view passes ``with_files``."""

    repo = serializers.CharField(source="repository.full_name")
    number = serializers.IntegerField()
    digest = serializers.CharField(read_only=True)
    message = serializers.CharField()
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(allow_null=True, read_only=True)
    aliases = serializers.ListField(child=serializers.CharField(), read_only=True)
    size = serializers.IntegerField()
    file_count = serializers.IntegerField()
    base_model = BaseRefSerializer(allow_null=True, read_only=True)
    adapter = serializers.JSONField(source="adapter_config", help_text="adapter_config.json (adapters); null otherwise")
    metadata = serializers.JSONField()
    job = serializers.CharField(allow_null=True, read_only=True)
    serving = serializers.DictField(allow_null=True, read_only=True, help_text="Adapters: rank, targets, modules_to_save, mergeable, …")

    def to_representation(self, version) -> dict:
        """A version from ``selectors.version_list`` (relations joined, aliases prefetched)."""
        repo, base = version.repository, version.base_version
        aliases = [a.name for a in version.aliases.all()]
        if version.number == repo.latest_number:
            aliases.insert(0, "latest")
        return {
            "repo": f"{repo.namespace.name}/{repo.name}", "number": version.number, "digest": f"sha256:{version.digest}",
            "message": version.message, "created_at": iso_utc(version.created_at),
            "created_by": version.created_by.username if version.created_by_id else None, "aliases": aliases,
            "size": version.size, "file_count": version.file_count,
            "base_model": None if base is None else {"repo": f"{base.repository.namespace.name}/{base.repository.name}",
                                                     "number": base.number, "digest": f"sha256:{base.digest}"},
            "adapter": version.adapter_config, "metadata": version.metadata,
            "job": version.job_id.hex if version.job_id else None, "serving": serving_facts(version.adapter_config),
        }


class EvaluationSerializer(serializers.Serializer):
    """Metrics an eval job measured for the version on one dataset version (newest first)."""

    dataset = BaseRefSerializer(allow_null=True, help_text=(
        "The dataset version scored, as pinned when the job was submitted; null where you cannot read the dataset."))
    dataset_file = serializers.CharField(allow_null=True, help_text="The .jsonl file scored; null: its only (or first).")
    metrics = serializers.DictField(child=serializers.FloatField(), help_text=(
        "`loss`, `perplexity`, `rows`, `tokens`; prompt/completion rows also `exact_match`, `token_accuracy`, "
        "`generated_rows`, `reference_tokens`."))
    job = serializers.CharField(help_text="Id of the eval job.")
    created_at = serializers.DateTimeField()

    def to_representation(self, evaluation) -> dict:
        """With ``context["readable"]`` (the dataset names the caller may read): an unreadable dataset is not named."""
        if evaluation.dataset_repo not in self.context.get("readable", ()):
            return {"dataset": None, "dataset_file": None, "metrics": evaluation.metrics, "job": evaluation.job_id.hex,
                    "created_at": iso_utc(evaluation.created_at)}
        return {"dataset": evaluation.dataset_pin, "dataset_file": evaluation.dataset_file or None,
                "metrics": evaluation.metrics, "job": evaluation.job_id.hex, "created_at": iso_utc(evaluation.created_at)}


class VersionDetailSerializer(VersionSerializer):
    created = serializers.BooleanField(required=False)
    files = FileSerializer(many=True)
    evaluations = EvaluationSerializer(many=True, required=False, help_text=(
        "Evaluations of this version, newest first (training metrics are in `metadata.metrics`); "
        "in the answer to GET, not to a push."))


class UploadResponseSerializer(serializers.Serializer):
    missing = MissingBlobSerializer(many=True)
    present = serializers.ListField(child=serializers.CharField())
    version = VersionDetailSerializer(required=False, help_text="Only when `commit` was sent and nothing was missing")


class AliasSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    updated_at = serializers.DateTimeField(allow_null=True)
    updated_by = serializers.CharField(allow_null=True)


# `from` is a Python keyword, so this one is built with type().
AliasMoveRecordSerializer = type("AliasMoveRecordSerializer", (serializers.Serializer,), {
    "__doc__": "One move of an alias: from which version number to which (null: it did not point anywhere).",
    "from": serializers.IntegerField(allow_null=True),
    "to": serializers.IntegerField(allow_null=True),
    "moved_at": serializers.DateTimeField(),
    "moved_by": serializers.CharField(allow_null=True),
})


class AliasDetailSerializer(AliasSerializer):
    history = AliasMoveRecordSerializer(many=True)


class AliasMoveSerializer(serializers.Serializer):
    version = serializers.CharField(help_text="number, alias or sha256:<digest>")


class TeamCreateSerializer(serializers.Serializer):
    name = serializers.CharField()


class MemberSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["username", "role"]


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices, default=Role.READ)


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class TokenSerializer(serializers.ModelSerializer):
    revoked = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "scope", "prefix", "created_at", "expires_at", "last_used_at", "revoked"]


class TokenCreatedSerializer(TokenSerializer):
    token = serializers.CharField(help_text="The secret: shown this once, stored only as a hash.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


class BlobSerializer(serializers.Serializer):
    sha256 = serializers.CharField()
    size = serializers.IntegerField()


class TokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(default="default", max_length=100)
    scope = serializers.ChoiceField(choices=USER_SCOPES, default=Scope.READ)
    expires_in_days = serializers.IntegerField(required=False, allow_null=True,
                                               help_text=f"1 to {MAX_TOKEN_DAYS}; null: no expiry")


class RootSerializer(serializers.Serializer):
    version = serializers.CharField()
    links = serializers.DictField(child=serializers.URLField())


class TeamRoleSerializer(serializers.Serializer):
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class WhoAmISerializer(serializers.Serializer):
    username = serializers.CharField()
    is_staff = serializers.BooleanField()
    teams = TeamRoleSerializer(many=True)
    token = TokenSerializer(allow_null=True)


class TeamSerializer(TeamRoleSerializer):
    member_count = serializers.IntegerField()


class TeamDetailSerializer(TeamRoleSerializer):
    members = MemberSerializer(many=True)

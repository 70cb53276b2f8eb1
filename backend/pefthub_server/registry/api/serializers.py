"""Request and response shapes of the registry API (also the OpenAPI schema)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from pefthub_server.core.models import USER_SCOPES, ApiToken, Scope
from pefthub_server.core.tokens import MAX_TOKEN_DAYS
from pefthub_server.registry.models import Membership, Repository, Role
from pefthub_server.registry.serving import serving_facts


class RepoSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="full_name", read_only=True)
    namespace = serializers.CharField(source="namespace.name", read_only=True)
    base_model = serializers.SerializerMethodField()
    peft_type = serializers.SerializerMethodField()
    latest_version = serializers.IntegerField(source="latest_number", read_only=True, allow_null=True)

    class Meta:
        model = Repository
        fields = [
            "id", "namespace", "name", "kind", "visibility", "description", "base_model", "peft_type",
            "latest_version", "created_at", "updated_at",
        ]

    def get_base_model(self, repo) -> str | None:
        return repo.base_model.full_name if repo.base_model_id else None

    def get_peft_type(self, repo) -> str | None:
        return repo.peft_type or None


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


class UploadOptionsSerializer(PushRepoSerializer):
    base_model = serializers.CharField(required=False, allow_null=True,
                                       help_text="An adapter's base, checked before any byte moves")


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


class UploadResponseSerializer(serializers.Serializer):
    missing = MissingBlobSerializer(many=True)
    present = serializers.ListField(child=serializers.CharField())


class VersionCreateSerializer(PushRepoSerializer):
    files = serializers.ListField(child=serializers.DictField())
    message = serializers.CharField(required=False, allow_blank=True, default="")
    base_model = serializers.CharField(required=False, allow_null=True)
    metadata = serializers.DictField(required=False, default=dict)
    aliases = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    job = serializers.UUIDField(required=False, allow_null=True, help_text="Only with that running job's token")


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
    digest = serializers.SerializerMethodField()
    message = serializers.CharField()
    created_at = serializers.DateTimeField()
    created_by = serializers.SerializerMethodField()
    aliases = serializers.SerializerMethodField()
    size = serializers.IntegerField()
    file_count = serializers.IntegerField()
    base_model = serializers.SerializerMethodField()
    adapter = serializers.JSONField(source="adapter_config", help_text="adapter_config.json (adapters); null otherwise")
    metadata = serializers.JSONField()
    job = serializers.SerializerMethodField()
    serving = serializers.SerializerMethodField(help_text="Adapters: rank, targets, modules_to_save, mergeable, …")

    def get_serving(self, version) -> dict | None:
        return serving_facts(version.adapter_config)

    def get_job(self, version) -> str | None:
        return version.job_id.hex if version.job_id else None

    def get_digest(self, version) -> str:
        return f"sha256:{version.digest}"

    def get_created_by(self, version) -> str | None:
        return version.created_by.username if version.created_by_id else None

    def get_aliases(self, version) -> list[str]:
        names = [a.name for a in version.aliases.all()]
        if version.number == version.repository.latest_number:
            names.insert(0, "latest")
        return names

    @extend_schema_field(BaseRefSerializer(allow_null=True))
    def get_base_model(self, version) -> dict | None:
        base = version.base_version
        if base is None:
            return None
        return {"repo": base.repository.full_name, "number": base.number, "digest": f"sha256:{base.digest}"}


class VersionDetailSerializer(VersionSerializer):
    created = serializers.BooleanField(required=False)
    files = FileSerializer(many=True)


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

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm

from pefthub.protocol.errors import ProtocolError
from pefthub_server.core.admin import ImmutableAdmin, ImmutableInline
from pefthub_server.core.errors import HubError
from pefthub_server.registry.aliases import alias_delete, alias_set
from pefthub_server.registry.models import (
    Alias,
    AliasMove,
    Blob,
    BlobCheck,
    BlobUpload,
    Evaluation,
    Membership,
    Namespace,
    Repository,
    Version,
    VersionFile,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Namespace)
class NamespaceAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "user", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "user__username"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["namespace", "user", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["namespace__name", "user__username"]
    list_select_related = ["namespace", "user"]


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    """Description and visibility are edited here; a repository is created by the API (which checks its name and
    base), and its identity - namespace, name, kind, base - never changes under its versions."""

    list_display = ["full_name", "kind", "visibility", "base_model", "peft_type", "latest_number", "updated_at"]
    list_filter = ["kind", "visibility", "peft_type"]
    search_fields = ["name", "namespace__name", "description"]
    list_select_related = ["namespace", "base_model__namespace"]
    readonly_fields = ["namespace", "name", "kind", "base_model", "created_by", "latest_number", "peft_type",
                       "created_at", "updated_at"]

    def has_add_permission(self, request):
        return False


class VersionFileInline(ImmutableInline):
    model = VersionFile
    fields = readonly_fields = ["path", "blob", "size"]


class EvaluationInline(ImmutableInline):
    """What eval jobs measured for the version (attached when each job completed)."""

    model = Evaluation
    fields = readonly_fields = ["dataset_repo", "dataset_number", "dataset_file", "metrics", "job", "created_at"]


@admin.register(Version)
class VersionAdmin(ImmutableAdmin):
    list_display = ["__str__", "digest", "size", "file_count", "created_by", "created_at"]
    list_filter = ["repository__kind", "created_at"]
    search_fields = ["repository__name", "repository__namespace__name", "digest", "message"]
    list_select_related = ["repository__namespace", "created_by"]
    json_fields = ("metadata", "adapter_config", "fingerprint")
    inlines = [VersionFileInline, EvaluationInline]


class BlobUploadInline(ImmutableInline):
    """Who proved they hold the blob's bytes, and when (a push may cite it for the grace period)."""

    model = BlobUpload
    fields = readonly_fields = ["user", "created_at"]


class BlobCheckInline(ImmutableInline):
    """What reading the blob's content found, as each kind of file a commit cited it as (kept, never read again)."""

    model = BlobCheck
    fields = readonly_fields = ["kind", "result"]


@admin.register(Blob)
class BlobAdmin(ImmutableAdmin):
    list_display = ["sha256", "size", "created_at"]
    search_fields = ["sha256"]
    inlines = [BlobUploadInline, BlobCheckInline]


class MoveAliasForm(ActionForm):
    revision = forms.CharField(required=False, label="to version", help_text="a version number, alias or digest",
                               widget=forms.TextInput(attrs={"size": 10}))


@admin.register(Alias)
class AliasAdmin(ImmutableAdmin):
    """Aliases move only through registry.aliases, as the API moves them, so every move is recorded: the "move"
    action here, or the delete action (which records the deletion too)."""

    list_display = ["repository", "name", "ref", "version", "updated_by", "updated_at"]
    search_fields = ["name", "repository__name", "repository__namespace__name"]
    list_select_related = ["repository__namespace", "version__repository__namespace", "updated_by"]
    action_form = MoveAliasForm
    actions = ["move", "delete_through_service"]

    @admin.action(description="Move selected aliases to the version given")
    def move(self, request, queryset):
        revision = request.POST.get("revision", "").strip()
        if not revision:
            self.message_user(request, "Name the version to move to (a number, alias or digest).", messages.ERROR)
            return
        for alias in queryset.select_related("repository__namespace"):
            try:
                moved = alias_set(user=request.user, repo=alias.repository, alias=alias.name, revision=revision)
            except (HubError, ProtocolError) as error:
                self.message_user(request, f"Alias {alias}: {error.message}", messages.ERROR)
            else:
                self.message_user(request, f"Alias {alias} now names version {moved.version.number}.")

    @admin.action(description="Delete selected aliases (recorded as moves)")
    def delete_through_service(self, request, queryset):
        for alias in queryset.select_related("repository__namespace"):
            try:
                alias_delete(user=request.user, repo=alias.repository, alias=alias.name)
            except (HubError, ProtocolError) as error:
                self.message_user(request, f"Alias {alias}: {error.message}", messages.ERROR)
            else:
                self.message_user(request, f"Alias {alias} deleted.")


@admin.register(AliasMove)
class AliasMoveAdmin(ImmutableAdmin):
    list_display = ["repository", "alias", "from_number", "to_number", "moved_by", "moved_at"]
    list_filter = ["moved_at"]
    search_fields = ["alias", "repository__name", "repository__namespace__name"]
    list_select_related = ["repository__namespace", "moved_by"]

from __future__ import annotations

from django.contrib import admin

from pefthub_server.registry.models import (
    Alias,
    AliasMove,
    Blob,
    BlobUpload,
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
    list_display = ["full_name", "kind", "visibility", "base_model", "peft_type", "latest_number", "updated_at"]
    list_filter = ["kind", "visibility", "peft_type"]
    search_fields = ["name", "namespace__name", "description"]
    list_select_related = ["namespace", "base_model__namespace"]
    raw_id_fields = ["base_model", "created_by"]
    readonly_fields = ["latest_number", "peft_type", "created_at", "updated_at"]


class VersionFileInline(admin.TabularInline):
    model = VersionFile
    extra = 0
    readonly_fields = ["path", "blob", "size"]
    can_delete = False


@admin.register(Version)
class VersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "digest", "size", "file_count", "created_by", "created_at"]
    list_filter = ["repository__kind", "created_at"]
    search_fields = ["repository__name", "repository__namespace__name", "digest", "message"]
    list_select_related = ["repository__namespace", "created_by"]
    raw_id_fields = ["repository", "base_version", "created_by"]
    inlines = [VersionFileInline]

    def has_change_permission(self, request, obj=None):
        return False  # versions are immutable


class BlobUploadInline(admin.TabularInline):
    """Who proved they hold the blob's bytes, and when (a push may cite it for the grace period)."""

    model = BlobUpload
    extra = 0
    readonly_fields = ["user", "created_at"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Blob)
class BlobAdmin(admin.ModelAdmin):
    list_display = ["sha256", "size", "created_at"]
    search_fields = ["sha256"]
    inlines = [BlobUploadInline]

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    list_display = ["repository", "name", "version", "updated_by", "updated_at"]
    search_fields = ["name", "repository__name", "repository__namespace__name"]
    list_select_related = ["repository__namespace", "version__repository__namespace", "updated_by"]
    raw_id_fields = ["repository", "version", "updated_by"]


@admin.register(AliasMove)
class AliasMoveAdmin(admin.ModelAdmin):
    list_display = ["repository", "alias", "from_number", "to_number", "moved_by", "moved_at"]
    list_filter = ["moved_at"]
    search_fields = ["alias", "repository__name", "repository__namespace__name"]
    list_select_related = ["repository__namespace", "moved_by"]

    def has_change_permission(self, request, obj=None):
        return False

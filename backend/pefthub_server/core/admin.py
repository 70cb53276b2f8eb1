from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html

from pefthub_server.core.models import ApiToken
from pefthub_server.core.tokens import tokens_revoke


def pretty_json(value) -> str:
    """A JSON value as an indented, key-sorted, escaped ``<pre>`` block."""
    if value is None:
        return "-"
    return format_html('<pre style="margin:0;white-space:pre-wrap">{}</pre>',
                       json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str))


class PrettyJsonAdmin(admin.ModelAdmin):
    """Shows the model's ``json_fields`` read-only and pretty-printed instead of as one-line text areas."""

    json_fields: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls.json_fields:
            def show(self, obj, name=name):
                return pretty_json(getattr(obj, name))

            setattr(cls, f"{name}_json", admin.display(description=name.replace("_", " "))(show))

    def get_exclude(self, request, obj=None):
        return [*(super().get_exclude(request, obj) or ()), *self.json_fields]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), *(f"{name}_json" for name in self.json_fields)]


class ImmutableAdmin(PrettyJsonAdmin):
    """A record of what happened (a version, a blob, an event, an alias move): listed and viewed, never added,
    edited or deleted here - deleting one would rewrite history others rely on."""

    def has_add_permission(self, request, *args):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ImmutableInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(ImmutableAdmin):
    """Viewed and revoked here; never edited (a scope or owner changed under a live secret) or deleted (the
    record of who held what)."""

    list_display = ["name", "user", "scope", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["scope", ("revoked_at", admin.EmptyFieldListFilter), "expires_at"]
    search_fields = ["name", "user__username", "prefix"]
    list_select_related = ["user"]
    actions = ["revoke"]  # create tokens with the API, the web page or `pefthub-server adduser`: secrets are shown once

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        tokens_revoke(queryset)

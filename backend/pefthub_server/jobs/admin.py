from __future__ import annotations

from django.contrib import admin

from pefthub_server.jobs.models import Job, JobEvent


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    readonly_fields = ["seq", "type", "attempt", "time", "data"]
    ordering = ["-seq"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "type", "status", "output", "owner", "attempt", "max_attempts", "worker", "created_at", "finished_at"]
    list_filter = ["type", "status", "queue", "created_at"]
    search_fields = ["id", "output_name", "namespace__name", "owner__username", "worker"]
    list_select_related = ["namespace", "owner"]
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobEventInline]

    def has_add_permission(self, request):
        return False  # submit jobs through the API, where specs are validated


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ["job", "seq", "type", "attempt", "time"]
    list_filter = ["type"]
    search_fields = ["job__id"]
    list_select_related = ["job__namespace"]

    def has_change_permission(self, request, obj=None):
        return False

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.urls import reverse
from django.utils.html import format_html

from pefthub_server.core import charts
from pefthub_server.core.admin import ImmutableAdmin, ImmutableInline
from pefthub_server.core.errors import HubError
from pefthub_server.jobs.models import Job, JobCheckpoint, JobEvent, Worker
from pefthub_server.jobs.services import job_cancel

#: events on one page of a job's change page (the page once showed every event as a JSON block: 13,600 px)
EVENTS_PER_PAGE = 50
#: characters of an event's data shown in its row; the event's own page shows all of it
EVENT_DATA_SHOWN = 300


def event_summary(data) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= EVENT_DATA_SHOWN else text[:EVENT_DATA_SHOWN - 1] + "…"


class JobCheckpointInline(ImmutableInline):
    """The job's kept checkpoints (their files are listed by the API: `GET /api/v1/jobs/{id}/checkpoints/{step}`)."""

    model = JobCheckpoint
    fields = readonly_fields = ["step", "attempt", "metrics", "size", "created_at"]


@admin.register(Job)
class JobAdmin(ImmutableAdmin):
    """Jobs are submitted through the API (which validates specs) and change only through jobs.services: the
    "cancel" action is job_cancel, as `POST /api/v1/jobs/{id}/cancel` is. The change page shows the job's
    events a page at a time."""

    list_display = ["id", "type", "status", "output", "owner", "attempt", "max_attempts", "worker", "waiting_for",
                    "created_at", "finished_at"]
    list_filter = ["type", "status", "queue", "created_at"]
    search_fields = ["id", "output_name", "namespace__name", "owner__username", "worker"]
    list_select_related = ["namespace", "owner"]
    json_fields = ("spec", "inputs", "needs", "progress", "metrics", "error")
    readonly_fields = ["web_page"]
    exclude = ["token"]  # the job's own credential: nothing for an operator to read here
    actions = ["cancel"]
    inlines = [JobCheckpointInline]

    @admin.action(description="Cancel selected jobs")
    def cancel(self, request, queryset):
        for job in queryset.select_related("namespace", "owner"):
            try:
                status = job_cancel(user=request.user, job=job).status
            except HubError as error:
                self.message_user(request, f"Job {job.id.hex}: {error.message}", messages.ERROR)
            else:
                self.message_user(request, f"Job {job.id.hex}: {status}.")

    @admin.display(description="web page")
    def web_page(self, job):
        url = reverse("web:job", args=[job.id.hex])
        return format_html('<a href="{}">{}</a> (loss chart, live progress)', url, url)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        events = JobEvent.objects.filter(job_id=object_id).order_by("seq").only("seq", "type", "attempt", "time", "data")
        page = Paginator(events, EVENTS_PER_PAGE).get_page(request.GET.get("events"))
        rows = [(event, event_summary(event.data)) for event in page]
        metrics = events.filter(type=JobEvent.Type.METRIC).values_list("data", flat=True)
        series = charts.loss_series(metrics)  # the web job page's chart: one point per loss value, one query
        chart = charts.loss_chart(series, title="Training and eval loss")
        return super().change_view(request, object_id, form_url, {
            **(extra_context or {}), "event_page": page, "event_rows": rows, "chart": chart, "series": series})


@admin.register(JobEvent)
class JobEventAdmin(ImmutableAdmin):
    list_display = ["job", "seq", "type", "attempt", "time"]
    list_filter = ["type"]
    search_fields = ["job__id"]
    list_select_related = ["job__namespace"]
    json_fields = ("data",)


@admin.register(Worker)
class WorkerAdmin(ImmutableAdmin):
    """Workers that said hello, with the capabilities they reported (they keep these rows up to date)."""

    list_display = ["name", "last_seen", "first_seen"]
    search_fields = ["name"]
    json_fields = ("capabilities",)

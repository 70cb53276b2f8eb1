"""Shapes of the jobs API (and its OpenAPI schema)."""

from __future__ import annotations

from rest_framework import serializers

from pefthub.protocol.jobs import WORKER_EVENT_TYPES
from pefthub_server.jobs.models import Job, JobEvent


class JobSerializer(serializers.ModelSerializer):
    id = serializers.SerializerMethodField()
    owner = serializers.CharField(source="owner.username")
    output = serializers.CharField()
    result = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id", "type", "status", "queue", "owner", "output", "spec", "inputs", "attempt", "max_attempts",
            "progress", "metrics", "result", "error", "worker", "created_at", "started_at", "finished_at",
            "heartbeat_at", "lease_expires_at",
        ]

    def get_id(self, job) -> str:
        return job.id.hex

    def get_result(self, job) -> dict | None:
        if job.status != Job.Status.SUCCEEDED:
            return None
        version = getattr(job, "result_version", None)
        if version is None:
            return None
        return {"repo": version.repository.full_name, "number": version.number, "digest": f"sha256:{version.digest}"}


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["seq", "type", "attempt", "time", "data"]


class EventPageSerializer(serializers.Serializer):
    events = JobEventSerializer(many=True)
    next_after = serializers.IntegerField()
    status = serializers.CharField()


class JobCreateSerializer(serializers.Serializer):
    """A train or merge spec (see docs/api.md and `pefthub.protocol.specs`); validated by the service."""

    type = serializers.ChoiceField(choices=Job.Type.choices)
    queue = serializers.CharField(required=False)
    max_attempts = serializers.IntegerField(required=False)


class ClaimRequestSerializer(serializers.Serializer):
    worker = serializers.CharField(max_length=200)


class ClaimSerializer(serializers.Serializer):
    job = JobSerializer()
    attempt = serializers.IntegerField()
    token = serializers.CharField()
    lease_seconds = serializers.IntegerField()
    heartbeat_seconds = serializers.FloatField()


class HeartbeatRequestSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    progress = serializers.DictField(required=False)


class HeartbeatSerializer(serializers.Serializer):
    cancel_requested = serializers.BooleanField()
    lease_expires_at = serializers.DateTimeField()


class EventInSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=WORKER_EVENT_TYPES)
    data = serializers.DictField()


class EventsRequestSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    events = EventInSerializer(many=True)


class CompleteRequestSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    version = serializers.IntegerField()


class FailRequestSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    code = serializers.CharField(max_length=64)
    message = serializers.CharField(allow_blank=True)
    retryable = serializers.BooleanField(default=False)

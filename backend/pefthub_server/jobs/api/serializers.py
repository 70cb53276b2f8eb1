"""Shapes of the jobs API (and its OpenAPI schema)."""

from __future__ import annotations

from dataclasses import fields

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from pefthub.protocol.jobs import DEFAULT_QUEUE, EVAL, MERGE, QUEUES, TRAIN, WORKER_EVENT_TYPES
from pefthub.protocol.limits import DEFAULT_ATTEMPTS, MAX_ATTEMPTS, MAX_MESSAGE_LENGTH
from pefthub.protocol.peft import METHODS
from pefthub.protocol.specs import COMBINATIONS, DTYPES, MAX_EVAL_NEW_TOKENS, MAX_EVAL_ROWS, TrainHyperparameters
from pefthub_server.jobs import selectors
from pefthub_server.jobs.models import Job, JobEvent
from pefthub_server.registry.api.serializers import (
    BaseRefSerializer,
    FileSerializer,
    FileSpecSerializer,
    UploadResponseSerializer,
)


class JobSerializer(serializers.ModelSerializer):
    id = serializers.SerializerMethodField()
    owner = serializers.CharField(source="owner.username")
    output = serializers.CharField()
    result = serializers.SerializerMethodField()
    error = serializers.JSONField(help_text="Why the job failed (`code`, `message`); null unless it did.")
    needs = serializers.JSONField(help_text=(
        "What its worker must have: `cuda`, `bitsandbytes` (a qlora train), `ram_bytes` (a merge: one shard of its base)."))
    waiting_for = serializers.SerializerMethodField(help_text=(
        "While queued and no connected worker can run it: the worker it waits for "
        "(`a worker with CUDA and bitsandbytes`); else null."))
    queue_position = serializers.SerializerMethodField(help_text="While queued: its 1-based place in its queue; else null.")
    queue_depth = serializers.SerializerMethodField(help_text="While queued: how many jobs its queue holds; else null.")

    class Meta:
        model = Job
        fields = [
            "id", "type", "status", "queue", "owner", "output", "spec", "inputs", "attempt", "max_attempts",
            "progress", "metrics", "result", "error", "worker", "needs", "waiting_for", "queue_position", "queue_depth",
            "created_at", "started_at", "finished_at", "heartbeat_at", "lease_expires_at",
        ]

    @classmethod
    def placed(cls, jobs, *, many: bool = False) -> JobSerializer:
        """The serializer of ``jobs`` (one, or a page with ``many``) with their places in their queues (one query)."""
        return cls(jobs, many=many, context={"places": selectors.queue_places(jobs if many else [jobs])})

    def get_id(self, job) -> str:
        return job.id.hex

    def get_waiting_for(self, job) -> str | None:
        return job.waiting_for or None if job.status == Job.Status.QUEUED else None

    def _place(self, job) -> tuple[int, int] | None:
        return self.context.get("places", {}).get(job.pk)

    def get_queue_position(self, job) -> int | None:
        place = self._place(job)
        return place[0] if place else None

    def get_queue_depth(self, job) -> int | None:
        place = self._place(job)
        return place[1] if place else None

    @extend_schema_field(BaseRefSerializer(allow_null=True))
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
    status = serializers.ChoiceField(choices=Job.Status.choices)


# --- the job request: documentation of `pefthub.protocol.specs`, which validates it (in the service) ---

_SCALAR_FIELDS = {"int": serializers.IntegerField, "float": serializers.FloatField, "bool": serializers.BooleanField,
                  "str": serializers.CharField}


def _hyperparameter_field(spec_field) -> serializers.Field:
    """A schema field for one TrainHyperparameters field: its type, default and help from the dataclass."""
    annotation = str(spec_field.type)
    nullable = annotation.endswith(" | None")
    field_class = _SCALAR_FIELDS.get(annotation.removesuffix(" | None"), serializers.JSONField)
    return field_class(required=False, allow_null=nullable, default=spec_field.default,
                       help_text=spec_field.metadata.get("help", ""))


TrainHyperparametersSerializer = type("TrainHyperparametersSerializer", (serializers.Serializer,), {
    "__doc__": "Training knobs, each optional; one that does not apply to the method is refused.",
    **{f.name: _hyperparameter_field(f) for f in fields(TrainHyperparameters)},
})


class _JobSpecSerializer(serializers.Serializer):
    output = serializers.CharField(help_text="`namespace/name` the result is pushed to (created if missing).")
    aliases = serializers.ListField(child=serializers.CharField(), required=False,
                                    help_text="Aliases to point at the result (not `latest`).")
    message = serializers.CharField(required=False, allow_blank=True, max_length=MAX_MESSAGE_LENGTH)
    max_attempts = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ATTEMPTS, default=DEFAULT_ATTEMPTS)


class TrainSpecSerializer(_JobSpecSerializer):
    """Train an adapter of `method` on `base_model` with `dataset`."""

    type = serializers.ChoiceField(choices=[TRAIN])
    base_model = serializers.CharField(help_text="`namespace/name[@revision]` of a model repository.")
    dataset = serializers.CharField(help_text="`namespace/name[@revision]` of a dataset repository.")
    method = serializers.ChoiceField(choices=METHODS, default="lora")
    hyperparameters = TrainHyperparametersSerializer(required=False)
    continue_from = serializers.CharField(required=False, help_text=(
        "`namespace/name[@revision]` of an adapter to start from: of `method`'s kind, on this base; the "
        "hyperparameters that shape it (r, lora_alpha, target_modules, num_virtual_tokens) default to its own."))
    queue = serializers.ChoiceField(choices=QUEUES, default=DEFAULT_QUEUE[TRAIN])


class AdapterWeightSerializer(serializers.Serializer):
    ref = serializers.CharField(help_text="`namespace/name[@revision]` of an adapter repository.")
    weight = serializers.FloatField(required=False, default=1.0)


class MergeSpecSerializer(_JobSpecSerializer):
    """Merge one or more adapters (weighted) into their shared base."""

    type = serializers.ChoiceField(choices=[MERGE])
    adapters = serializers.ListField(child=AdapterWeightSerializer(), min_length=1, help_text=(
        'Each adapter once; `"ns/name@rev"` is short for `{"ref": "ns/name@rev", "weight": 1.0}`.'))
    combination = serializers.ChoiceField(choices=COMBINATIONS, default="linear")
    density = serializers.FloatField(required=False, default=0.5, min_value=0, max_value=1,
                                     help_text="0 < density <= 1; only for ties, dare_linear and dare_ties.")
    dtype = serializers.ChoiceField(choices=DTYPES, default="float32")
    queue = serializers.ChoiceField(choices=QUEUES, default=DEFAULT_QUEUE[MERGE])


class EvalSpecSerializer(serializers.Serializer):
    """Score an adapter version on a dataset; the metrics are attached to that version (no new version).

    Needs read on the adapter, its base and the dataset, and write on the adapter's namespace.
    """

    type = serializers.ChoiceField(choices=[EVAL])
    adapter = serializers.CharField(help_text="`namespace/name[@revision]` of an adapter repository.")
    dataset = serializers.CharField(help_text="`namespace/name[@revision]` of a dataset repository.")
    dataset_file = serializers.CharField(required=False, allow_null=True, default=None,
                                         help_text="Which .jsonl file of the dataset; null: its only (or first) one.")
    max_rows = serializers.IntegerField(required=False, default=1000, min_value=1, max_value=MAX_EVAL_ROWS,
                                        help_text="Score at most the file's first this many rows.")
    max_new_tokens = serializers.IntegerField(required=False, default=64, min_value=1, max_value=MAX_EVAL_NEW_TOKENS,
                                              help_text="Cap on generated tokens per prompt/completion row.")
    max_seq_length = serializers.IntegerField(required=False, default=512, min_value=8,
                                              help_text="Tokens per row; longer rows are truncated, as in training.")
    batch_size = serializers.IntegerField(required=False, default=8, min_value=1, help_text="Rows per loss batch.")
    max_attempts = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ATTEMPTS, default=DEFAULT_ATTEMPTS)
    queue = serializers.ChoiceField(choices=QUEUES, default=DEFAULT_QUEUE[EVAL])


JobCreateSerializer = PolymorphicProxySerializer(
    component_name="JobSpec",
    serializers={TRAIN: TrainSpecSerializer, MERGE: MergeSpecSerializer, EVAL: EvalSpecSerializer},
    resource_type_field_name="type",
)


class EventsAppendedSerializer(serializers.Serializer):
    last_seq = serializers.IntegerField(help_text="Sequence number of the last event stored.")


class ClaimRequestSerializer(serializers.Serializer):
    worker = serializers.CharField(max_length=200)
    capabilities = serializers.DictField(required=False, help_text=(
        "What the worker can run (pefthub.protocol.capabilities): `cuda`, `gpu_count`, `gpu_memory` (bytes per GPU), "
        "`bitsandbytes`, `torch`, `ram_bytes`, `queues`. A job whose needs they miss is refused (409 `needs_unmet`)."))


class HelloRequestSerializer(serializers.Serializer):
    worker = serializers.CharField(max_length=200)
    capabilities = serializers.DictField(help_text="As in a claim; `queues` names the queues it consumes.")


class HelloSerializer(serializers.Serializer):
    sent = serializers.IntegerField(help_text="Waiting jobs sent to the worker's direct queue by this hello.")
    hello_seconds = serializers.FloatField(help_text="Say hello again within this many seconds to count as connected.")


class CheckpointSerializer(serializers.Serializer):
    step = serializers.IntegerField(help_text="The optimizer step it was saved after.")
    attempt = serializers.IntegerField(help_text="The attempt that saved it.")
    metrics = serializers.DictField(help_text="loss, learning_rate, epoch, train_tokens at that step.")
    size = serializers.IntegerField(help_text="Bytes of its files.")
    created_at = serializers.DateTimeField()


class CheckpointDetailSerializer(CheckpointSerializer):
    files = FileSerializer(many=True)


class CheckpointUploadRequestSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    files = FileSpecSerializer(many=True)


CheckpointUploadResponseSerializer = UploadResponseSerializer


class CheckpointCreateSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    step = serializers.IntegerField(min_value=1)
    metrics = serializers.DictField(required=False, default=dict)
    files = serializers.ListField(child=serializers.DictField(), help_text="`[{path, sha256, size}]`, uploaded first.")


class PromoteRequestSerializer(serializers.Serializer):
    output = serializers.CharField(help_text="`namespace/name` of the adapter repository (created if missing).")
    aliases = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    message = serializers.CharField(required=False, allow_blank=True, default="", max_length=MAX_MESSAGE_LENGTH)


class ClaimSerializer(serializers.Serializer):
    job = JobSerializer()
    attempt = serializers.IntegerField()
    token = serializers.CharField()
    lease_seconds = serializers.IntegerField()
    heartbeat_seconds = serializers.FloatField()
    checkpoint = CheckpointSerializer(allow_null=True, help_text="The job's newest checkpoint, to resume from; or null.")


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
    version = serializers.IntegerField(required=False, allow_null=True, default=None,
                                       help_text="A train or merge job: the result version it pushed.")
    metrics = serializers.JSONField(required=False, allow_null=True, default=None, help_text=(
        "An eval job: `{name: number}` (at most 64), attached to the adapter version it pinned."))


class FailRequestSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    code = serializers.CharField(max_length=64)
    message = serializers.CharField(allow_blank=True)
    retryable = serializers.BooleanField(default=False)

"""Registry domain: namespaces and teams, repositories, immutable versions, aliases, blobs."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from pefthub.protocol.repos import KINDS, ROLES, VISIBILITIES
from pefthub_server.core.models import choices


class Namespace(models.Model):
    """A user's own namespace or a team. Names are unique across both, ignoring case."""

    class Kind(models.TextChoices):
        USER = "user"
        TEAM = "team"

    name = models.CharField(max_length=64, db_index=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="namespace"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # `acme` and `ACME` would be two owners a reader cannot tell apart.
        constraints = [models.UniqueConstraint(Lower("name"), name="uniq_namespace_name_ci")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


Role = choices("Role", ROLES)
#: roles by strength: each grants what the ones before it grant
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES, 1)}


class Membership(models.Model):
    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.READ)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["namespace", "user"], name="uniq_membership")]
        ordering = ["namespace__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.namespace} ({self.role})"


class Repository(models.Model):
    Kind = choices("Kind", KINDS)
    Visibility = choices("Visibility", VISIBILITIES)

    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="repositories")
    name = models.CharField(max_length=96)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.PRIVATE)
    description = models.TextField(blank=True, default="")
    base_model = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="adapters",
        help_text="For adapters: the model repository they fit.",
    )
    # Denormalised from the latest version, for cheap catalogue filters.
    latest_number = models.PositiveIntegerField(null=True, blank=True)
    peft_type = models.CharField(max_length=32, blank=True, default="", db_index=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint("namespace", Lower("name"), name="uniq_repo_name_ci")]
        indexes = [models.Index(fields=["namespace", "name"], name="repo_namespace_name_idx"), models.Index(fields=["kind", "visibility"])]
        ordering = ["namespace__name", "name"]
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return self.full_name

    @property
    def full_name(self) -> str:
        return f"{self.namespace.name}/{self.name}"


class Blob(models.Model):
    """A verified object in the blob store, addressed by its sha256."""

    sha256 = models.CharField(max_length=64, primary_key=True)
    size = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.sha256


class BlobCheck(models.Model):
    """What the hub found reading a verified blob as one kind of file (``acceptance.check_blob``).

    It depends on the blob's bytes alone, so it is written once, by the first commit whose checks
    pass, and a later commit citing the blob reads nothing from the store.
    """

    blob = models.ForeignKey(Blob, on_delete=models.CASCADE, related_name="checks")
    kind = models.CharField(max_length=16, help_text="safetensors, config, json, text, jsonl or tokenizer")
    # Text, not a JSON column: PostgreSQL's jsonb reorders keys, and a header's tensor order is kept as read.
    result = models.TextField(help_text="JSON: a safetensors header's tensors, a config's object, or null")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["blob", "kind"], name="uniq_blob_check")]

    def __str__(self) -> str:
        return f"{self.blob_id} as {self.kind}"


class BlobUpload(models.Model):
    """Proof of possession: ``user`` sent the hub these exact bytes and the hub verified them.

    Knowing a blob's hash is not access to it: a push may cite a blob only if its user can
    read a version holding it or uploaded it within the grace period (``blobs.UPLOAD_GRACE``).
    """

    blob = models.ForeignKey(Blob, on_delete=models.CASCADE, related_name="uploads")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True, help_text="When it was last uploaded")
    checkpoint = models.BooleanField(default=False, help_text=(
        "Uploaded for a job checkpoint: it proves possession to that job's checkpoints only, never to a push"))

    class Meta:
        constraints = [models.UniqueConstraint(fields=["blob", "user", "checkpoint"], name="uniq_blob_upload")]

    def __str__(self) -> str:
        return f"{self.blob_id} by {self.user}"


class Version(models.Model):
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    digest = models.CharField(max_length=64, db_index=True, help_text="sha256 of the canonical manifest")
    message = models.TextField(blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    adapter_config = models.JSONField(null=True, blank=True, help_text="Parsed adapter_config.json (adapters)")
    fingerprint = models.JSONField(null=True, blank=True, help_text="Linear modules of a model version")
    base_version = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="adapter_versions"
    )
    size = models.BigIntegerField(default=0)
    file_count = models.PositiveIntegerField(default=0)
    job = models.OneToOneField(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="result_version",
        help_text="The job that produced this version (at most one version per job)",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "number"], name="uniq_version_number")]
        ordering = ["repository", "-number"]

    def __str__(self) -> str:
        return f"{self.repository}@{self.number}"


class VersionFile(models.Model):
    version = models.ForeignKey(Version, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=512)
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="version_files")
    size = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "path"], name="uniq_version_path")]
        ordering = ["path"]

    def __str__(self) -> str:
        return self.path


class Alias(models.Model):
    class Ref(models.TextChoices):
        """What the Hugging Face view lists it as (`list_repo_refs`); to the hub both are movable names."""

        TAG = "tag"  # set through the hub's API, CLI or SDK, or HF `create_tag`
        BRANCH = "branch"  # made by HF `create_branch`; HF commits to it move it

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64)
    ref = models.CharField(max_length=8, choices=Ref.choices, default=Ref.TAG)
    version = models.ForeignKey(Version, on_delete=models.CASCADE, related_name="aliases")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "name"], name="uniq_alias_name")]
        ordering = ["name"]
        verbose_name_plural = "aliases"

    def __str__(self) -> str:
        return f"{self.repository}@{self.name}"


class AliasMove(models.Model):
    """Audit log: every set, move and delete of an alias."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="alias_moves")
    alias = models.CharField(max_length=64)
    from_number = models.PositiveIntegerField(null=True, blank=True)
    to_number = models.PositiveIntegerField(null=True, blank=True)
    moved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    moved_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-moved_at", "-id"]

    def __str__(self) -> str:
        return f"{self.repository}@{self.alias}: {self.from_number} -> {self.to_number}"


class CatalogueGeneration(models.Model):
    """One row whose ``value`` changes, in the writing transaction, whenever anything a repository list shows or
    whom it shows it to may have changed (``registry.generation``): list pages are cached under it."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    value = models.BigIntegerField()

    def __str__(self) -> str:
        return f"catalogue generation {self.value}"


class Evaluation(models.Model):
    """Metrics an ``eval`` job measured for a version on one dataset version; attached when the job completes.

    The dataset is kept as its pin (repository, number, digest), not a foreign key: the
    scores stay readable, and comparable by pin, after the dataset repository is deleted.
    """

    version = models.ForeignKey(Version, on_delete=models.CASCADE, related_name="evaluations")
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="evaluation",
                               help_text="The eval job that measured it (one evaluation per job)")
    dataset_repo = models.CharField(max_length=161, help_text="namespace/name of the dataset repository")
    dataset_number = models.PositiveIntegerField()
    dataset_digest = models.CharField(max_length=64, help_text="sha256 of the dataset version's canonical manifest")
    dataset_file = models.CharField(max_length=512, blank=True, default="", help_text="The .jsonl file scored")
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["version", "-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.version} on {self.dataset_repo}@{self.dataset_number}"

    @property
    def dataset_pin(self) -> dict:
        return {"repo": self.dataset_repo, "number": self.dataset_number, "digest": f"sha256:{self.dataset_digest}"}

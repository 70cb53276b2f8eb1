"""Frozen dataclasses for what the API returns; ``raw`` keeps the whole JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int
    url: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        return cls(
            path=str(data["path"]),
            sha256=str(data["sha256"]).lower(),
            size=int(data["size"]),
            url=data.get("url"),
        )


@dataclass(frozen=True)
class Repo:
    id: str
    namespace: str
    name: str
    kind: str
    visibility: str
    description: str = ""
    base_model: str | None = None
    peft_type: str | None = None
    latest_version: int | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repo:
        namespace = data.get("namespace") or str(data.get("id", "/")).split("/", 1)[0]
        name = data.get("name") or str(data.get("id", "/")).split("/", 1)[-1]
        return cls(
            id=data.get("id") or f"{namespace}/{name}",
            namespace=namespace,
            name=name,
            kind=data.get("kind", ""),
            visibility=data.get("visibility", ""),
            description=data.get("description") or "",
            base_model=data.get("base_model"),
            peft_type=data.get("peft_type"),
            latest_version=data.get("latest_version"),
            created_at=data.get("created_at"),
            updated_at=data.get("updated_at"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Evaluation:
    """Metrics an eval job measured for a version on one dataset version (``hub.evaluate``)."""

    #: ``{"repo", "number", "digest"}`` of the dataset version scored; None where you cannot read the dataset
    dataset: dict[str, Any] | None
    metrics: dict[str, Any]
    dataset_file: str | None = None
    job: str | None = None
    created_at: str | None = None

    @property
    def dataset_ref(self) -> str:
        """``namespace/name@number`` of the dataset version (with ``:file`` when a file was named)."""
        if not self.dataset:
            return "a dataset you cannot see"
        ref = f"{self.dataset.get('repo')}@{self.dataset.get('number')}"
        return f"{ref}:{self.dataset_file}" if self.dataset_file else ref

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evaluation:
        dataset = data.get("dataset")
        return cls(dataset=dict(dataset) if dataset else None, metrics=dict(data.get("metrics") or {}),
                   dataset_file=data.get("dataset_file"), job=data.get("job"), created_at=data.get("created_at"))


@dataclass(frozen=True)
class Version:
    repo: str
    number: int
    digest: str
    created: bool = True
    message: str = ""
    created_at: str | None = None
    created_by: str | None = None
    aliases: tuple[str, ...] = ()
    size: int | None = None
    file_count: int | None = None
    base_model: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the manifest; ``None`` in listings, which leave files out
    files: tuple[FileEntry, ...] | None = None
    #: evaluations of this version, newest first (``hub.version()`` only; ``None`` in listings)
    evaluations: tuple[Evaluation, ...] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def training_metrics(self) -> dict[str, Any]:
        """What the training job measured (``metadata["metrics"]``: first_loss, final_loss, eval_loss …)."""
        metrics = self.metadata.get("metrics")
        return dict(metrics) if isinstance(metrics, dict) else {}

    @property
    def ref(self) -> str:
        """``namespace/name@<number>``: this exact version."""
        return f"{self.repo}@{self.number}"

    @property
    def digest_hex(self) -> str:
        return self.digest.split(":", 1)[-1].lower()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Version:
        files, evaluations = data.get("files"), data.get("evaluations")
        return cls(
            repo=data["repo"],
            number=int(data["number"]),
            digest=str(data["digest"]),
            created=bool(data.get("created", True)),
            message=data.get("message") or "",
            created_at=data.get("created_at"),
            created_by=data.get("created_by"),
            aliases=tuple(data.get("aliases") or ()),
            size=data.get("size"),
            file_count=data.get("file_count"),
            base_model=data.get("base_model"),
            adapter=data.get("adapter"),
            metadata=dict(data.get("metadata") or {}),
            files=None if files is None else tuple(FileEntry.from_json(f) for f in files),
            evaluations=None if evaluations is None else tuple(Evaluation.from_json(e) for e in evaluations),
            raw=dict(data),
        )

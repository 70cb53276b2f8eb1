"""Jobs: training, merging and evaluating on the hub's workers, seen from the client.

:class:`Job` is a live handle over the server's Job JSON: ``refresh()`` re-reads it,
``events()`` pages through what the worker reported, ``wait()`` polls until the job
ends (with a progress bar), ``cancel()`` asks it to stop. :class:`JobsMixin` gives
:class:`~pefthub.Hub` its ``train``, ``merge``, ``evaluate``, ``jobs`` and ``job`` methods.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ._http import quote_segment
from .errors import JobCancelled, JobFailed, ValidationError, translated
from .protocol.jobs import FINISHED
from .protocol.specs import parse_job_request
from .refs import check_alias, parse_ref

if TYPE_CHECKING:
    from ._checkpoints import Checkpoint
    from .client import Hub
    from .models import Version

__all__ = ["Job", "JobEvent", "JobsMixin"]


# Looked up at call time, so tests can swap them for a recording fake.
_sleep: Callable[[float], None] = time.sleep
_monotonic: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log: ``status``, ``log``, ``metric``, ``checkpoint``, ``artifact``."""

    seq: int
    type: str
    attempt: int | None = None
    time: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobEvent:
        attempt = data.get("attempt")
        return cls(
            seq=int(data["seq"]),
            type=str(data.get("type") or ""),
            attempt=None if attempt is None else int(attempt),
            time=data.get("time"),
            data=dict(data.get("data") or {}),
        )


class Job:
    """A job on the hub; attributes mirror the Job JSON (``raw`` keeps all of it).

    ``result`` is the :class:`~pefthub.Version` the job produced (fetched once, for a
    succeeded job), ``result_ref`` its ``namespace/name@number``.
    """

    id: str
    type: str
    status: str
    queue: str | None
    owner: str | None
    output: str | None
    spec: dict[str, Any]
    inputs: dict[str, Any]
    attempt: int
    max_attempts: int | None
    progress: dict[str, Any]
    metrics: dict[str, Any]
    error: dict[str, Any] | None
    worker: str | None
    #: what its worker must have (``cuda``, ``bitsandbytes``, ``ram_bytes``)
    needs: dict[str, Any]
    #: while queued and no connected worker can run it: ``"a worker with CUDA and bitsandbytes"``
    waiting_for: str | None
    #: while queued: its 1-based place in its queue, and how many jobs the queue holds
    queue_position: int | None
    queue_depth: int | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    raw: dict[str, Any]

    def __init__(self, hub: Hub, data: Mapping[str, Any]) -> None:
        self._hub = hub
        self._result_version: Version | None = None
        self._update(data)

    def _update(self, data: Mapping[str, Any]) -> None:
        self.raw = dict(data)
        self.id = str(data["id"])
        self.type = str(data.get("type") or (data.get("spec") or {}).get("type") or "")
        self.status = str(data.get("status") or "")
        self.queue = data.get("queue")
        self.owner = data.get("owner")
        self.output = data.get("output")
        self.spec = dict(data.get("spec") or {})
        self.inputs = dict(data.get("inputs") or {})
        self.attempt = int(data.get("attempt") or 0)
        self.max_attempts = data.get("max_attempts")
        self.progress = dict(data.get("progress") or {})
        self.metrics = dict(data.get("metrics") or {})
        self.error = data.get("error") or None
        self.worker = data.get("worker")
        self.needs = dict(data.get("needs") or {})
        self.waiting_for = data.get("waiting_for") or None
        self.queue_position = data.get("queue_position")
        self.queue_depth = data.get("queue_depth")
        self.created_at = data.get("created_at")
        self.started_at = data.get("started_at")
        self.finished_at = data.get("finished_at")

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, type={self.type!r}, status={self.status!r}, output={self.output!r})"

    @property
    def _path(self) -> str:
        return f"jobs/{quote_segment(self.id)}"

    @property
    def status_line(self) -> str:
        """``queued 2/5, waiting for a worker with CUDA``: the status, with its place in the queue and what it waits for."""
        text = self.status
        if self.queue_position is not None:
            text += f" {self.queue_position}/{self.queue_depth}" if self.queue_depth else f" {self.queue_position}"
        if self.waiting_for:
            text += f", waiting for {self.waiting_for}"
        return text

    @property
    def done(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status in FINISHED

    @property
    def result_ref(self) -> str | None:
        """``namespace/name@number`` of the version the job produced, once it has one."""
        result = self.raw.get("result")
        if not isinstance(result, Mapping) or not result.get("repo") or result.get("number") is None:
            return None
        return f"{result['repo']}@{result['number']}"

    @property
    def result(self) -> Version | None:
        """The version a succeeded job produced (one request the first time), else ``None``."""
        ref = self.result_ref
        if self.status != "succeeded" or ref is None:
            return None
        if self._result_version is None or self._result_version.ref != ref:
            self._result_version = self._hub.version(ref)
        return self._result_version

    # -- calls ------------------------------------------------------------------
    def refresh(self) -> Job:
        """Re-read the job from the hub; returns ``self``."""
        self._update(self._hub.request("GET", self._path))
        return self

    def checkpoints(self) -> list[Checkpoint]:
        """The job's kept checkpoints (step, attempt, metrics, created_at), newest first;
        ``hub.promote_checkpoint(job, step, output=...)`` makes a version of one."""
        return self._hub.checkpoints(self.id)

    def cancel(self) -> Job:
        """Ask the hub to stop the job: a queued one is cancelled at once, a running one
        becomes ``cancel_requested`` until its worker stops. Returns ``self``, updated."""
        self._update(self._hub.request("POST", f"{self._path}/cancel"))
        return self

    def events(
        self, after: int = 0, *, follow: bool = False, poll_interval: float = 1.0, limit: int | None = None
    ) -> Iterator[JobEvent]:
        """Every event with ``seq > after``, page after page.

        With ``follow`` it keeps polling every ``poll_interval`` seconds until the
        job has finished and no events remain (like ``tail -f`` that ends).
        """
        cursor = int(after)
        while True:
            params: dict[str, Any] = {"after": cursor}
            if limit is not None:
                params["limit"] = limit
            page = self._hub.request("GET", f"{self._path}/events", params=params) or {}
            events = [JobEvent.from_json(e) for e in page.get("events") or []]
            yield from events
            nxt = page.get("next_after")
            new_cursor = int(nxt) if nxt is not None else (events[-1].seq if events else cursor)
            if events and new_cursor > cursor:  # a full page may have more behind it
                cursor = new_cursor
                continue
            cursor = max(cursor, new_cursor)
            if not follow:
                return
            status = page.get("status") or self.refresh().status
            if status in FINISHED:
                return
            _sleep(poll_interval)

    def wait(
        self, *, timeout: float | None = None, poll_interval: float = 1.0, progress: bool | None = None
    ) -> Job:
        """Poll until the job ends; return ``self`` when it succeeded.

        Raises :class:`~pefthub.errors.JobFailed` (the worker's code and message),
        :class:`~pefthub.errors.JobCancelled`, or :class:`TimeoutError` after
        ``timeout`` seconds (the job keeps running). ``progress`` defaults to the
        hub's setting (off with ``PEFTHUB_DISABLE_PROGRESS_BARS=1``).
        """
        show = self._hub.progress if progress is None else progress
        deadline = None if timeout is None else _monotonic() + timeout
        with tqdm(total=None, unit="step", disable=not show, dynamic_ncols=True) as bar:
            while True:
                self.refresh()
                self._draw(bar)
                if self.done:
                    break
                delay = poll_interval
                if deadline is not None:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"job {self.id} is still {self.status} after {timeout:g}s")
                    delay = min(delay, remaining)
                _sleep(delay)
        return self._outcome()

    def _draw(self, bar: Any) -> None:
        step, total = self.progress.get("step"), self.progress.get("total_steps")
        if isinstance(total, int) and total > 0:
            bar.total = total
        if isinstance(step, int):
            bar.n = step
        bar.set_description(f"{self.type} {self.output or self.id} [{self.status_line}]", refresh=False)
        loss = self.metrics.get("loss")
        if isinstance(loss, (int, float)):
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.refresh()

    def _outcome(self) -> Job:
        if self.status == "failed":
            err = self.error or {}
            raise JobFailed(self, err.get("code"), err.get("message") or "the job failed without saying why")
        if self.status == "cancelled":
            raise JobCancelled(self)
        return self


# -- submitting -------------------------------------------------------------------
def _alias_list(aliases: Iterable[str] | str) -> list[str]:
    return [check_alias(a) for a in ([aliases] if isinstance(aliases, str) else aliases)]


def _adapter_list(adapters: Any, weights: Iterable[float] | None) -> list[dict[str, Any]]:
    """``"a@1"``, ``["a@1", "b@2"]``, ``[("a@1", 0.7), ...]``, ``[{"ref", "weight"}]``
    or ``AdapterWeight``s -> ``[{"ref", "weight"}]``."""
    items = [adapters] if isinstance(adapters, str) else list(adapters)
    pairs: list[tuple[Any, Any]] = []
    for item in items:
        if isinstance(item, str):
            pairs.append((item, None))
        elif isinstance(item, Mapping):
            pairs.append((item.get("ref"), item.get("weight")))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pairs.append((item[0], item[1]))
        elif hasattr(item, "ref"):
            pairs.append((item.ref, getattr(item, "weight", None)))
        else:
            raise ValidationError(
                f"adapters: {item!r} is neither a reference nor a (reference, weight) pair",
                code="validation_error", detail={"field": "adapters"},
            )
    if weights is not None:
        weight_list = list(weights)
        if len(weight_list) != len(pairs):
            raise ValidationError(
                f"weights: {len(weight_list)} weight(s) for {len(pairs)} adapter(s); give one per adapter",
                code="validation_error", detail={"field": "weights"},
            )
        if any(w is not None for _, w in pairs):
            raise ValidationError(
                "weights: given both with the adapters and in weights=; use one of the two",
                code="validation_error", detail={"field": "weights"},
            )
        pairs = [(ref, w) for (ref, _), w in zip(pairs, weight_list)]
    return [{"ref": ref, "weight": 1.0 if w is None else w} for ref, w in pairs]


class JobsMixin:
    """``train``, ``merge``, ``evaluate``, ``jobs`` and ``job``: the job half of :class:`~pefthub.Hub`."""

    if TYPE_CHECKING:
        def request(
            self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
            headers: Mapping[str, str] | None = None,
        ) -> Any: ...

        def _paginate(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]: ...

    def train(
        self,
        *,
        base_model: str,
        dataset: str,
        output: str,
        method: str = "lora",
        continue_from: str | None = None,
        aliases: Iterable[str] | str = (),
        message: str = "",
        queue: str | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        **more_hyperparameters: Any,
    ) -> Job:
        """Submit a training job: ``hub.train(base_model=..., dataset=..., output=..., r=16)``.

        Hyperparameters come as keywords (or a ``hyperparameters`` mapping); the spec
        is validated here first, so a typo raises :class:`ValidationError` before any
        request. Retries of this one call reuse one ``Idempotency-Key``: at most one job.
        ``continue_from="acme/bot@3"`` starts from that adapter's weights: the hub checks
        at submit that it is readable, of ``method``'s kind and on this base, and the
        hyperparameters left out that shape it (``r``, ``lora_alpha``, ``target_modules``,
        ``num_virtual_tokens``) are the adapter's.
        """
        spec = {
            "type": "train",
            "base_model": base_model,
            "dataset": dataset,
            "output": output,
            "method": method,
            "hyperparameters": {**(hyperparameters or {}), **more_hyperparameters},
            **({"continue_from": continue_from} if continue_from is not None else {}),
            "aliases": _alias_list(aliases),
            "message": message,
        }
        return self._submit(spec, queue, max_attempts, idempotency_key)

    def merge(
        self,
        adapters: Any,
        *,
        output: str,
        weights: Iterable[float] | None = None,
        combination: str = "linear",
        density: float = 0.5,
        dtype: str = "float32",
        aliases: Iterable[str] | str = (),
        message: str = "",
        queue: str | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a merge job: one adapter into its base, or several combined.

        ``adapters`` is a reference, a list of references (with ``weights=``), or a
        list of ``(reference, weight)`` pairs; a weight left out is 1.0.
        """
        spec = {
            "type": "merge",
            "adapters": _adapter_list(adapters, weights),
            "output": output,
            "combination": combination,
            "density": density,
            "dtype": dtype,
            "aliases": _alias_list(aliases),
            "message": message,
        }
        return self._submit(spec, queue, max_attempts, idempotency_key)

    def evaluate(
        self,
        adapter: str,
        *,
        dataset: str,
        dataset_file: str | None = None,
        max_new_tokens: int = 64,
        max_rows: int = 1000,
        max_seq_length: int = 512,
        batch_size: int = 8,
        queue: str | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit an eval job: score adapter version ``adapter`` on ``dataset`` and attach the metrics to it.

        ``hub.evaluate("acme/bot@3", dataset="acme/heldout").wait()``, then ``hub.version("acme/bot@3").evaluations``.
        Every format gets ``loss`` and ``perplexity``; prompt/completion rows also ``exact_match`` and
        ``token_accuracy`` of greedy generations of at most ``max_new_tokens`` tokens (README, "Evaluating and
        comparing"). Needs read on the adapter, its base and the dataset, and write on the adapter's namespace.
        Runs on the ``cpu`` queue unless ``queue`` says otherwise; makes no version.
        """
        spec = {
            "type": "eval", "adapter": adapter, "dataset": dataset, "dataset_file": dataset_file,
            "max_new_tokens": max_new_tokens, "max_rows": max_rows, "max_seq_length": max_seq_length,
            "batch_size": batch_size,
        }
        return self._submit(spec, queue, max_attempts, idempotency_key)

    def _submit(
        self, spec: dict[str, Any], queue: str | None, max_attempts: int | None, idempotency_key: str | None
    ) -> Job:
        body = dict(spec)
        if queue is not None:
            body["queue"] = queue
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        with translated():  # checked here, so a bad spec sends no request
            parse_job_request(body)
        # Fixed here, before the HTTP layer's retry loop: every retry sends the same key.
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return Job(self, self.request("POST", "jobs", json=body, headers=headers))  # type: ignore[arg-type]

    def jobs(self, *, status: str | None = None, type: str | None = None, output: str | None = None) -> Iterator[Job]:
        """Jobs you may see, newest first, page after page; filters as the API's."""
        if output is not None:
            output = parse_ref(output, allow_revision=False).repo_id
        for item in self._paginate("jobs", {"status": status, "type": type, "output": output}):
            yield Job(self, item)  # type: ignore[arg-type]

    def job(self, job_id: str) -> Job:
        """One job by its id, or by a prefix of it (at least 8 hex digits) that only one job you may see has.

        An ambiguous prefix raises :class:`~pefthub.errors.ValidationError` (code ``ambiguous_job_id``)
        naming the matches; the returned job has its full id.
        """
        return Job(self, self.request("GET", f"jobs/{quote_segment(job_id)}"))  # type: ignore[arg-type]

"""The run pages: a version, two versions compared, the lineage graph, the jobs list and a job with live loss curves.

Every read goes through the API's selectors (``registry.selectors``, ``jobs.selectors``), so a page
shows exactly what the API would: what a caller may not read is a 404, and a parent it may not
read is drawn without its name. Each page runs a constant number of queries whatever the data size:
lists are bounded and a job's metric events are fetched once, as values.
"""

from __future__ import annotations

import functools
import json
import re
import uuid

from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string

from pefthub.protocol.errors import ProtocolError
from pefthub_server.core import charts
from pefthub_server.core.errors import HubError, NotFound, ValidationFailed, from_protocol
from pefthub_server.jobs import selectors as job_selectors
from pefthub_server.jobs.models import Job, JobEvent
from pefthub_server.registry import selectors
from pefthub_server.registry.models import Alias, Evaluation, Repository, Version, VersionFile
from pefthub_server.web.errors import refused

#: files listed on a version page (the rest are counted)
FILES_SHOWN = 200
#: children drawn in a lineage graph (the rest are counted)
CHILDREN_SHOWN = 8
#: a merge's adapter pins searched for "merges using this adapter" (a merge of more is found by its first ones)
MERGE_SLOTS_SEARCHED = 16
#: events of the log on a job page, and per "older" page
EVENTS_SHOWN = 50
#: new events one live poll returns
LIVE_EVENTS = 200
JOBS_PER_PAGE = 50

_JOB_REF = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{1,32}")


def _pages(view):
    """Errors as pages: not found is Django's 404 (it says nothing of what exists); bad input a 400 naming it."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ProtocolError as exc:
            error = from_protocol(exc)
        except NotFound as exc:
            raise Http404(exc.message) from None
        except HubError as exc:
            error = exc
        return refused(request, error)

    return wrapper


# --- versions ------------------------------------------------------------------------------------


def _version(request, namespace: str, name: str, number) -> tuple[Repository, Version]:
    repo = selectors.repository_get(user=request.user, namespace=namespace, name=name)
    return repo, selectors.version_resolve(repo=repo, revision=str(number))


def _pin_label(pin: dict) -> str:
    return f"{pin.get('repo')}@{pin.get('number')}"


def _pin_href(pin: dict) -> str:
    return f"/{pin['repo']}/versions/{pin['number']}"


def _readable_names(user, pins: list[dict]) -> set[str]:
    """Which of the repositories the ``pins`` name ``user`` may read: one query."""
    return selectors.readable_names(user, (p.get("repo") for p in pins))


def _parents(version: Version) -> list[tuple[dict, str]]:
    """(pin, relation) of each parent: the base version, the training data, the adapter it continued, the merged adapters."""
    lineage = (version.metadata or {}).get("lineage") or {}
    out: list[tuple[dict, str]] = []
    if version.base_version_id:
        base = version.base_version
        out.append(({"repo": base.repository.full_name, "number": base.number}, "base model"))
    elif isinstance(lineage.get("base_model"), dict):
        out.append((lineage["base_model"], "base model"))
    if isinstance(lineage.get("dataset"), dict):
        out.append((lineage["dataset"], "training data"))
    if isinstance(lineage.get("parent"), dict):
        out.append((lineage["parent"], "continued from"))
    for pin in lineage.get("adapters") or []:
        if isinstance(pin, dict):
            weight = pin.get("weight")
            out.append((pin, "merged adapter" + (f" ×{weight:g}" if isinstance(weight, int | float) else "")))
    return out


def _children(user, repo: Repository, version: Version) -> tuple[list[Version], int, str]:
    """(the newest CHILDREN_SHOWN children ``user`` may read, how many there are, their relation)."""
    pin = {"repo": repo.full_name, "number": version.number}
    if repo.kind == Repository.Kind.MODEL:
        match, relation = Q(base_version=version), "adapter"
    elif repo.kind == Repository.Kind.ADAPTER:
        match, relation = Q(), "merge"
        for slot in range(MERGE_SLOTS_SEARCHED):
            match |= Q(**{f"metadata__lineage__adapters__{slot}__repo": pin["repo"],
                          f"metadata__lineage__adapters__{slot}__number": pin["number"]})
    else:
        match, relation = Q(metadata__lineage__dataset__repo=pin["repo"],
                            metadata__lineage__dataset__number=pin["number"]), "trained on it"
    qs = Version.objects.filter(match, repository__in=selectors.readable_repositories(user))
    shown = list(qs.select_related("repository__namespace").order_by("-created_at", "-id")[:CHILDREN_SHOWN])
    return shown, qs.count(), relation  # counted always, so the page's queries do not depend on the data


def lineage_for(*, user, version: Version) -> dict:
    """The context of ``web/runs/lineage.html`` for ``version`` (a repository page includes it too).

    Parents ``user`` may not read are drawn as "a repository you cannot see", never by name.
    """
    repo = version.repository
    parents = _parents(version)
    readable = _readable_names(user, [pin for pin, _ in parents])
    parent_nodes = [charts.Node(_pin_label(pin), relation, _pin_href(pin)) if pin.get("repo") in readable
                    else charts.Node(charts.HIDDEN, relation) for pin, relation in parents]
    children, count, relation = _children(user, repo, version)
    child_nodes = [charts.Node(f"{c.repository.full_name}@{c.number}", relation,
                               f"/{c.repository.full_name}/versions/{c.number}") for c in children]
    center = charts.Node(f"{repo.full_name}@{version.number}", f"this {repo.kind}")
    return {"svg": charts.lineage_graph(center, parent_nodes, child_nodes, more_children=count - len(children)),
            "parents": parent_nodes, "children": child_nodes, "more": count - len(children), "readable": readable}


def _evaluations(user, versions: list[Version]) -> tuple[dict[int, list[Evaluation]], set[str]]:
    """Each version's evaluations (newest first) and which of their datasets ``user`` may read: two queries at most."""
    found: dict[int, list[Evaluation]] = {v.pk: [] for v in versions}
    for evaluation in Evaluation.objects.filter(version__in=versions).order_by("-created_at", "-id"):
        found[evaluation.version_id].append(evaluation)
    names = {e.dataset_repo for rows in found.values() for e in rows}
    return found, selectors.readable_names(user, names)


def _evaluation_sections(evaluations: list[Evaluation], readable: set[str]) -> dict:
    """``Evaluation on acme/heldout@2``: the metrics of the newest evaluation on each dataset version."""
    sections: dict[str, dict] = {}
    for e in evaluations:
        label = _pin_label(e.dataset_pin) if e.dataset_repo in readable else charts.HIDDEN
        if e.dataset_file and e.dataset_repo in readable:
            label += f" ({e.dataset_file})"
        sections.setdefault(f"Evaluation on {label}", e.metrics)
    return sections


def _facts(version: Version, readable: set[str], evaluations: dict | None = None) -> dict:
    """Adapter config, training facts, hyperparameters and metrics (training, then each evaluation's), as flat rows
    (compare diffs them); ``evaluations``: the sections of :func:`_evaluation_sections`."""
    meta = version.metadata or {}
    lineage = meta.get("lineage") or {}
    adapter = version.adapter_config or {}
    config = {key: adapter.get(key) for key in ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules",
                                                  "use_dora", "task_type") if key in adapter}
    training = {"method": lineage.get("method"), "combination": lineage.get("combination"),
                "quantization": lineage.get("quantization"), "density": lineage.get("density"),
                "dtype": lineage.get("dtype")}
    dataset = lineage.get("dataset")
    if isinstance(dataset, dict):
        training["dataset"] = _pin_label(dataset) if dataset.get("repo") in readable else charts.HIDDEN
    hyper = lineage.get("hyperparameters") if isinstance(lineage.get("hyperparameters"), dict) else {}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    sections = {"Adapter config": config, "Training": {k: v for k, v in training.items() if v is not None},
                "Hyperparameters": dict(sorted(hyper.items())), "Metrics": dict(sorted(metrics.items())),
                **(evaluations or {})}
    return {title: {str(k): _shown(v) for k, v in rows.items()} for title, rows in sections.items()}


def _shown(value) -> str:
    """A fact as one line of text: lists joined, objects as sorted JSON, floats to 6 significant digits."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(_shown(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


@_pages
def version_detail(request, namespace: str, name: str, number: int):
    repo, version = _version(request, namespace, name, number)
    lineage = lineage_for(user=request.user, version=version)
    files = list(VersionFile.objects.filter(version=version).order_by("path").values_list("path", "size", "blob_id")[:FILES_SHOWN])
    aliases = list(Alias.objects.filter(version=version).order_by("name").values_list("name", "updated_at"))
    job_visible = bool(version.job_id) and job_selectors.visible_jobs(request.user).filter(pk=version.job_id).exists()
    evaluations, datasets = _evaluations(request.user, [version])
    facts = _facts(version, lineage["readable"], _evaluation_sections(evaluations[version.pk], datasets))
    return render(request, "web/runs/version.html", {
        "repo": repo, "version": version, "lineage": lineage, "facts": facts, "files": files,
        "files_hidden": max(version.file_count - len(files), 0), "aliases": aliases, "job_visible": job_visible,
    })


def _compare_number(request, key: str) -> str:
    value = request.GET.get(key, "")
    if not value.isdigit() or len(value) > 9:
        raise ValidationFailed(f"`{key}` must be a version number, like `?a=1&b=2`; got {value[:20]!r}.",
                               code="invalid_compare")
    return value


@_pages
def compare(request, namespace: str, name: str):
    repo = selectors.repository_get(user=request.user, namespace=namespace, name=name)
    a = selectors.version_resolve(repo=repo, revision=_compare_number(request, "a"))
    b = selectors.version_resolve(repo=repo, revision=_compare_number(request, "b"))
    pins = [pin for v in (a, b) for pin, _ in _parents(v)]
    readable = _readable_names(request.user, pins)
    evaluations, datasets = _evaluations(request.user, [a, b])
    facts_a = _facts(a, readable, _evaluation_sections(evaluations[a.pk], datasets))
    facts_b = _facts(b, readable, _evaluation_sections(evaluations[b.pk], datasets))
    sections = []
    for title in dict.fromkeys([*facts_a, *facts_b]):  # evaluations match by dataset version, in either
        keys = list(dict.fromkeys([*facts_a.get(title, {}), *facts_b.get(title, {})]))
        rows = [(key, facts_a.get(title, {}).get(key), facts_b.get(title, {}).get(key)) for key in keys]
        sections.append((title, [(k, va, vb, va != vb) for k, va, vb in rows]))
    return render(request, "web/runs/compare.html", {"repo": repo, "a": a, "b": b, "sections": sections})


# --- jobs ----------------------------------------------------------------------------------------


def _job(request, job_ref: str) -> Job:
    if not _JOB_REF.fullmatch(job_ref):
        raise NotFound("No such job.")
    ref: uuid.UUID | str = uuid.UUID(job_ref) if len(job_ref) >= 32 else job_ref.lower()
    return job_selectors.job_get(user=request.user, job_id=ref)


def _choice(request, key: str, values) -> str | None:
    value = request.GET.get(key) or None
    if value is not None and value not in values:
        raise ValidationFailed(f"`{key}` must be one of {', '.join(values)}; got {value[:32]!r}.", code=f"invalid_{key}")
    return value


@_pages
def job_list(request):
    status, job_type = _choice(request, "status", Job.Status.values), _choice(request, "type", Job.Type.values)
    qs = job_selectors.visible_jobs(request.user)
    if status:
        qs = qs.filter(status=status)
    if job_type:
        qs = qs.filter(type=job_type)
    page = Paginator(qs.order_by("-created_at"), JOBS_PER_PAGE).get_page(request.GET.get("page"))
    keep = "&".join(f"{k}={v}" for k, v in (("status", status), ("type", job_type)) if v)
    return render(request, "web/runs/jobs.html", {
        "page": page, "status": status, "type": job_type, "keep": keep,
        "statuses": Job.Status.values, "types": Job.Type.values,
    })


def _chart(job: Job):
    """The loss chart from the job's metric events, fetched once as values."""
    events = JobEvent.objects.filter(job=job, type=JobEvent.Type.METRIC).order_by("seq").values_list("data", flat=True)
    series = charts.loss_series(events)
    return charts.loss_chart(series, title=f"Training and eval loss of job {job.id.hex[:12]}"), series


def _event_rows(events: list[JobEvent]) -> list[dict]:
    """Events as log rows: a log's message, a metric's values, anything else as compact JSON."""
    rows = []
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == JobEvent.Type.LOG and isinstance(data.get("message"), str):
            text = data["message"]
        elif event.type == JobEvent.Type.METRIC:
            text = ", ".join(f"{k}={_shown(v)}" for k, v in data.items())
        else:
            text = json.dumps(data, sort_keys=True, default=str)
        rows.append({"seq": event.seq, "time": event.time, "type": event.type, "attempt": event.attempt, "text": text})
    return rows


def _progress(job: Job) -> dict:
    step, total = job.progress.get("step"), job.progress.get("total_steps")
    ok = isinstance(step, int | float) and isinstance(total, int | float) and total > 0
    return {"step": step, "total": total, "epoch": job.progress.get("epoch"), "known": ok}


@_pages
def job_detail(request, job_ref: str):
    job = _job(request, job_ref)
    before = request.GET.get("before", "")
    events = JobEvent.objects.filter(job=job)
    if before.isdigit() and len(before) <= 9:
        events = events.filter(seq__lt=int(before))
    elif before:
        raise ValidationFailed(f"`before` must be an event number; got {before[:20]!r}.", code="invalid_before")
    log = list(events.order_by("-seq")[:EVENTS_SHOWN])[::-1]
    chart, series = _chart(job)
    result = getattr(job, "result_version", None) if job.status == Job.Status.SUCCEEDED else None
    return render(request, "web/runs/job.html", {
        "job": job, "log": _event_rows(log), "older": log[0].seq if log and log[0].seq > 1 else None, "chart": chart,
        "series": series, "result": result, "progress": _progress(job), "active": job.status not in Job.FINISHED,
        "paged": bool(before),  # an older page of the log is not followed live
        "pins": [(p, _pin_href(p)) for p in job.pinned_inputs() if isinstance(p, dict) and p.get("repo")],
        "last_seq": job.last_seq,
    })


@_pages
def job_live(request, job_ref: str):
    """What a job page polls while the job runs: status, progress, new events and (when metrics came) the chart."""
    job = _job(request, job_ref)
    after = request.GET.get("after", "0")
    if not after.isdigit() or len(after) > 9:
        raise ValidationFailed(f"`after` must be an event number; got {after[:20]!r}.", code="invalid_after")
    events = list(JobEvent.objects.filter(job=job, seq__gt=int(after)).order_by("seq")[:LIVE_EVENTS])
    body = {"status": job.status, "active": job.status not in Job.FINISHED, "progress": _progress(job),
            "after": events[-1].seq if events else int(after),
            "events": render_to_string("web/runs/_events.html", {"log": _event_rows(events)}) if events else ""}
    if any(e.type == JobEvent.Type.METRIC for e in events) or not body["active"]:
        chart, series = _chart(job)
        body["chart"] = render_to_string("core/_chart.html", {"chart": chart, "series": series})
    return JsonResponse(body)

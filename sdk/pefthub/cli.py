"""The ``pefthub`` command: login, whoami, push, pull, env, ls, info, alias, compare; train,
merge, eval and jobs (in :mod:`pefthub._cli_jobs`).

Exit status: 0 on success, 1 when the hub (or the local files) refused, 2 for a
usage error (bad arguments, a malformed reference).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import _config
from . import constants as c
from ._cli_jobs import add_job_commands
from ._cli_util import LOGIN_HINT, SHELLS, NoToken, credentials, no_token_message
from ._cli_util import UsageError as _UsageError
from ._cli_util import labelled as _labelled
from ._cli_util import make_hub as _hub
from ._cli_util import print_json as _print_json
from ._cli_util import shell_exports as _shell_exports
from ._cli_util import show as _show
from ._table import table as _table
from .client import Hub
from .errors import AuthenticationFailed, HubError, NotFound, RefError, ValidationError
from .models import Repo, Version
from .peft_compat import PeftCompatError, PeftCompatWarning, resolve_version
from .protocol.repos import KINDS, VISIBILITIES
from .refs import parse_ref


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


# -- commands -------------------------------------------------------------------
def cmd_login(args: argparse.Namespace) -> int:
    url = _config.resolve_url(args.url, _config.read_config())
    token = args.token
    if not token:
        if sys.stdin.isatty():
            token = getpass.getpass(f"Token for {url}: ")
        else:
            token = sys.stdin.readline()
        token = (token or "").strip()
    if not token:
        raise _UsageError("no token given: pass --token, type it at the prompt or pipe it on stdin")
    with Hub(url, token, progress=False, retry_unreached=False) as hub:
        me = hub.whoami()
    _config.write_config(url, token)
    print(f"Logged in as {me.get('username')}")
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    with _hub() as hub:
        me = hub.whoami()
    if args.json:
        _print_json(me)
        return 0
    print(me.get("username"))
    teams = me.get("teams") or []
    if teams:
        print("teams: " + ", ".join(f"{t.get('name')} ({t.get('role')})" for t in teams))
    token = me.get("token") or {}
    if token:
        print(f"token: {token.get('name')} (scope {token.get('scope')})")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    metadata = None
    if args.metadata:
        try:
            metadata = json.loads(args.metadata)
        except ValueError as exc:
            raise _UsageError(f"--metadata is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise _UsageError("--metadata must be a JSON object")
    with _hub() as hub:
        try:
            version = hub.push(
                args.path,
                args.ref,
                base_model=args.base_model,
                kind=args.kind,
                aliases=args.alias or (),
                message=args.message,
                metadata=metadata,
                visibility=args.visibility,
            )
        except ValidationError as exc:
            if exc.code != "base_model_required":
                raise
            # the hub names the SDK's keyword; here it is a flag
            raise ValidationError(
                f"{args.ref} is an adapter, and an adapter is filed against the model it was trained on: add "
                f"`--base-model {_base_example(Path(args.path))}` (a model repository on the hub; push it first "
                "if it is not there).", status=exc.status, code=exc.code, request_id=exc.request_id,
            ) from None
    state = "created" if version.created else "unchanged"
    print(f"{version.ref} {version.digest} {state}")
    return 0


def _base_example(path: Path) -> str:
    """The base an adapter folder's adapter_config.json names when it is a hub reference, else acme/base."""
    try:
        named = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        return str(parse_ref(named, allow_revision=False)) if isinstance(named, str) else "acme/base"
    except (OSError, ValueError, AttributeError):  # no such file, not JSON, not an object, not a reference
        return "acme/base"


def cmd_pull(args: argparse.Namespace) -> int:
    hf_cache = args.hf_cache or args.hf_home is not None
    if hf_cache and (args.local_dir or args.peft_version):
        # the Hugging Face cache holds the files as the hub serves them, keyed by commit
        raise _UsageError("--hf-cache fills the Hugging Face cache as served: it takes no --local-dir or --peft-version")
    with _hub() as hub:
        if hf_cache:
            cache_dir = Path(args.hf_home).expanduser() / "hub" if args.hf_home else None
            try:
                print(hub.pull_to_hf_cache(args.ref, cache_dir=cache_dir))
            except ImportError as exc:  # huggingface_hub missing: say which extra brings it
                print(f"error: {exc}", file=sys.stderr)
                return 1
            return 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PeftCompatWarning)
            path = hub.pull(args.ref, local_dir=args.local_dir, peft_version=args.peft_version)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(path)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    with _hub() as hub:
        hf = hub.hf_env()
        env: dict[str, str | None] = {c.ENV_URL: hub.url, c.ENV_HF_ENDPOINT: hf[c.ENV_HF_ENDPOINT],
                                      c.ENV_HF_DISABLE_XET: hf[c.ENV_HF_DISABLE_XET]}
        if hub.token:
            if not args.no_token:
                env[c.ENV_HF_TOKEN] = hf[c.ENV_HF_TOKEN]
            env[c.ENV_HF_NO_IMPLICIT_TOKEN] = None  # left over from an earlier tokenless eval
        else:
            env[c.ENV_HF_TOKEN] = None
            env[c.ENV_HF_NO_IMPLICIT_TOKEN] = hf[c.ENV_HF_NO_IMPLICIT_TOKEN]
    print(_shell_exports(env, args.shell))
    return 0


def _peft_version(value: str) -> str:
    try:
        resolve_version(value)
    except PeftCompatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def cmd_ls(args: argparse.Namespace) -> int:
    if credentials()[1] is None:
        print(f"note: no token, so only public repositories are listed ({LOGIN_HINT} to see yours)", file=sys.stderr)
    with _hub() as hub:
        repos = list(
            hub.repos(
                kind=args.kind,
                namespace=args.namespace,
                base_model=args.base_model,
                peft_type=args.peft_type,
                search=args.search,
            )
        )
    if args.json:
        _print_json([r.raw for r in repos])
        return 0
    print(
        _table(
            ("REPO", "KIND", "VISIBILITY", "BASE MODEL", "PEFT", "LATEST"),
            [(r.id, r.kind, r.visibility, r.base_model, r.peft_type, r.latest_version) for r in repos],
        )
    )
    return 0


def _describe_repo(repo: Repo, versions: list[Version]) -> str:
    rows = [
        ("kind", repo.kind), ("visibility", repo.visibility), ("base model", repo.base_model),
        ("peft type", repo.peft_type), ("description", repo.description),
        ("latest", repo.latest_version if repo.latest_version is not None else "-"),
    ]
    lines = [repo.id, *_labelled(rows, width=11), ""]
    if versions:
        rows = [
            (v.number, v.digest[:19], ",".join(v.aliases), _human(v.size), v.created_at, v.created_by, v.message)
            for v in versions
        ]
        lines.append(_table(("VERSION", "DIGEST", "ALIASES", "SIZE", "CREATED", "BY", "MESSAGE"), rows))
    else:
        lines.append("no versions yet")
    return "\n".join(lines)


def _describe_version(v: Version) -> str:
    file_count = v.file_count if v.file_count is not None else len(v.files or ())
    base, adapter = v.base_model or {}, v.adapter or {}
    targets = adapter.get("target_modules")
    lineage = v.metadata.get("lineage") if isinstance(v.metadata.get("lineage"), dict) else {}
    parent = lineage.get("parent") if isinstance(lineage.get("parent"), dict) else None
    rows = [
        ("created", f"{v.created_at or '-'} by {v.created_by or '-'}"), ("aliases", ", ".join(v.aliases) or "-"),
        ("size", f"{_human(v.size)} in {file_count} file(s)"),
        ("base", base and f"{base.get('repo')}@{base.get('number')}"),
        ("adapter", adapter and f"{adapter.get('peft_type')} r={adapter.get('r')} alpha={adapter.get('lora_alpha')} "
                                f"targets={','.join(targets) if isinstance(targets, list) else targets}"),
        ("parent", parent and ("a repository you cannot read (continued from it)" if parent.get("hidden")
                               else f"{parent.get('repo')}@{parent.get('number')} (continued from it)")),
        ("message", v.message), ("metadata", v.metadata and json.dumps(v.metadata, sort_keys=True)),
    ]
    files = _table(("PATH", "SIZE", "SHA256"), [(f.path, _human(f.size), f.sha256[:16]) for f in v.files or ()])
    return "\n".join([f"{v.ref}  {v.digest}", *_labelled(rows), "", files, *_describe_metrics(v)])


def _describe_metrics(v: Version) -> list[str]:
    """Every metric of the version: what training recorded, then each evaluation (newest first) with its dataset."""
    rows = [("training", name, _metric(value), "") for name, value in sorted(v.training_metrics.items())]
    for evaluation in v.evaluations or ():
        when = (evaluation.created_at or "")[:19].replace("T", " ")
        rows += [(f"eval {evaluation.dataset_ref}", name, _metric(value), when)
                 for name, value in sorted(evaluation.metrics.items())]
    if not rows:
        return ["", f"no metrics yet: `pefthub eval {v.ref} --dataset NS/NAME` scores it"] if v.adapter else []
    return ["", _table(("METRICS", "NAME", "VALUE", "MEASURED"), rows)]


def _metric(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cmd_compare(args: argparse.Namespace) -> int:
    with _hub() as hub:
        comparison = hub.compare(args.a, args.b)
    return _show(args.json, comparison.to_dict(), comparison.table)


def cmd_info(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref)
    with _hub() as hub:
        if ref.explicit:
            version = hub.version(args.ref)
            return _show(args.json, version.raw, lambda: _describe_version(version))
        repo = hub.repo(ref.repo_id)
        versions = list(hub.versions(ref.repo_id))
    return _show(args.json, {"repo": repo.raw, "versions": [v.raw for v in versions]},
                 lambda: _describe_repo(repo, versions))


def cmd_alias(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref)
    with _hub() as hub:
        if args.delete:
            hub.delete_alias(ref.repo_id, args.alias)
            print(f"deleted {ref.repo_id}@{args.alias}")
            return 0
        if not ref.explicit:
            raise _UsageError(f"say which version {args.alias!r} should name: {ref.repo_id}@<revision>")
        result = hub.set_alias(args.ref, args.alias)
    target = (result or {}).get("version", ref.revision)
    print(f"{ref.repo_id}@{args.alias} -> {ref.repo_id}@{target}")
    return 0


# -- parser -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pefthub",
        description="PEFT Hub: push, pull and find adapters, models and datasets.",
        epilog=f"Target and credentials: --url/--token of login, or {c.ENV_URL} and {c.ENV_TOKEN}.",
    )
    parser.add_argument("--version", action="version", version=f"pefthub {c.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("login", help="save a token for a hub, after checking it")
    p.add_argument("--url", help=f"hub URL (default: ${c.ENV_URL}, the saved one, {c.DEFAULT_URL})")
    p.add_argument("--token", help="API token (default: prompt, or read from stdin)")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("whoami", help="who the token belongs to")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_whoami, needs_token=True)

    p = sub.add_parser("push", help="upload a folder or a file as a new version")
    p.add_argument("path", metavar="PATH")
    p.add_argument("ref", metavar="REF", help="namespace/name")
    p.add_argument("--base-model", help="base model reference, ns/name[@rev] (adapters)")
    p.add_argument("--kind", choices=KINDS, help="repository kind (default: inferred from the files)")
    p.add_argument("--alias", action="append", metavar="ALIAS", help="point this alias at the new version (repeatable)")
    p.add_argument("-m", "--message", default="", help="version message")
    p.add_argument("--metadata", metavar="JSON", help="metadata to record, a JSON object")
    p.add_argument("--visibility", choices=VISIBILITIES, default="private", help="for a new repository (default: private)")
    p.set_defaults(func=cmd_push, needs_token=True)

    p = sub.add_parser("pull", help="download a version (cached, verified); prints its path")
    p.add_argument("ref", metavar="REF", help="namespace/name[@revision]")
    p.add_argument("--local-dir", help="also copy the files into this folder and print it")
    p.add_argument("--peft-version", metavar="X.Y", type=_peft_version,
                   help="drop adapter_config.json keys this (older) peft does not know; names them on stderr")
    p.add_argument("--hf-cache", action="store_true",
                   help="fill the Hugging Face cache instead ($HF_HUB_CACHE or $HF_HOME/hub), for HF_HUB_OFFLINE=1")
    p.add_argument("--hf-home", metavar="DIR", help="with --hf-cache (implied): fill DIR/hub")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("env", help="print the exports that point Hugging Face tools at the hub: eval \"$(pefthub env)\"")
    p.add_argument("--shell", choices=SHELLS, default="sh", help="output syntax (default: sh)")
    p.add_argument("--no-token", action="store_true", help="leave HF_TOKEN out of the output")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("ls", help="list repositories")
    p.add_argument("--kind", choices=KINDS)
    p.add_argument("--namespace")
    p.add_argument("--base-model", metavar="NS/NAME")
    p.add_argument("--peft-type", metavar="TYPE", help="e.g. LORA")
    p.add_argument("--search", metavar="TEXT", help="match name and description")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("info", help="a repository and its versions, or one version (REF@rev) and its files")
    p.add_argument("ref", metavar="REF", help="namespace/name[@revision]")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("alias", help="point an alias at a version (REF@rev ALIAS), or --delete it")
    p.add_argument("ref", metavar="REF", help="namespace/name@revision (namespace/name with --delete)")
    p.add_argument("alias", metavar="ALIAS")
    p.add_argument("--delete", action="store_true", help="delete the alias instead")
    p.set_defaults(func=cmd_alias, needs_token=True)

    p = sub.add_parser("compare", help="two versions' metrics side by side: training, and evaluations by dataset")
    p.add_argument("a", metavar="A", help="namespace/name@revision")
    p.add_argument("b", metavar="B", help="namespace/name@revision; DELTA is B - A")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_compare)

    add_job_commands(sub)
    return parser


def _command(args: argparse.Namespace) -> str:
    return " ".join(["pefthub", args.command] + ([args.jobs_command] if getattr(args, "jobs_command", None) else []))


def _refused(args: argparse.Namespace, exc: AuthenticationFailed) -> str:
    """A 401, said in the CLI's terms: no token (log in), or a token the hub does not take (log in again)."""
    if args.command == "login":
        return f"{_config.resolve_url(args.url, _config.read_config())} did not accept this token: {exc.message}"
    url, token, _ = credentials()
    if token is None:
        return no_token_message(_command(args))
    return f"{url} did not accept your token ({exc.message}): run `pefthub login` again or set {c.ENV_TOKEN}."


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        if getattr(args, "needs_token", False) and credentials()[1] is None:
            raise NoToken(no_token_message(_command(args)))
        return args.func(args)
    except (_UsageError, RefError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NoToken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except AuthenticationFailed as exc:
        print(f"error: {_refused(args, exc)}", file=sys.stderr)
        return 1
    except NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.command != "login" and credentials()[1] is None:
            print(f"note: no token was sent, so only public repositories are visible: {LOGIN_HINT}", file=sys.stderr)
        return 1
    except HubError as exc:
        text = str(exc)
        if exc.status is None and exc.code and text.startswith(f"{exc.code}: "):
            text = text[len(exc.code) + 2:]  # the hub's refusals keep their status and code; the client's own, none
        print(f"error: {text}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

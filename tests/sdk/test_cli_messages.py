"""What the ``pefthub`` command says when a newcomer trips: no token, a refused token, no hub at
the URL, a missing flag, an unknown alias or version, a short job id. Each answer names the
fix in the CLI's own terms (commands, flags, env vars), never HTTP talk."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from pefthub.protocol.jobs import JOB_ID_MIN_PREFIX
from tests.fixtures.services import free_port

from .state import write_tree

NO_TOKEN = "needs a token: run `pefthub login` or set PEFTHUB_TOKEN."


def said(err: str) -> str:
    """stderr without the request ids the hub's errors end with."""
    return re.sub(r" \(request id [0-9a-f]+\)$", "", err, flags=re.M)


@pytest.fixture
def anonymous(monkeypatch, proxy, seed, tmp_path):
    """The CLI on the hub (through the proxy) with no token anywhere; alice's seed beside it."""
    monkeypatch.setenv("PEFTHUB_URL", proxy.url)
    monkeypatch.delenv("PEFTHUB_TOKEN", raising=False)
    monkeypatch.setenv("PEFTHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PEFTHUB_DISABLE_PROGRESS_BARS", "1")
    return seed


def test_commands_that_need_a_token_say_how_to_get_one_before_any_request(cli, anonymous, proxy, tmp_path):
    folder = write_tree(tmp_path / "data", {"train.jsonl": b"{}\n"})
    commands = {
        "whoami": ["whoami"], "push": ["push", str(folder), "acme/data"], "alias": ["alias", "acme/data@1", "prod"],
        "train": ["train", "--base-model", "acme/b", "--dataset", "acme/d", "--output", "acme/o"],
        "merge": ["merge", "acme/bot@1", "--output", "acme/m"], "jobs ls": ["jobs", "ls"],
        "jobs show": ["jobs", "show", "ed9ec9282619"], "jobs logs": ["jobs", "logs", "ed9ec9282619"],
        "jobs cancel": ["jobs", "cancel", "ed9ec9282619"],
    }
    for name, argv in commands.items():
        assert cli(*argv) == (1, "", f"error: `pefthub {name}` {NO_TOKEN}\n"), name
    assert proxy.requests() == []


def test_a_login_saved_for_another_hub_is_named(cli, anonymous, proxy, tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps({"url": "http://hub.example:8000", "token": "t"}))
    code, _, err = cli("whoami")
    assert (code, err) == (1, f"error: `pefthub whoami` needs a token: run `pefthub login` or set PEFTHUB_TOKEN "
                              f"(the token `pefthub login` saved is for http://hub.example:8000, not {proxy.url}).\n")


def test_a_refused_token_says_to_log_in_again(cli, anonymous, monkeypatch, proxy):
    monkeypatch.setenv("PEFTHUB_TOKEN", "phub_not_a_real_token")
    code, out, err = cli("whoami")
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {proxy.url} did not accept your token (")
    assert err.endswith("): run `pefthub login` again or set PEFTHUB_TOKEN.\n")
    code, _, err = cli("login", "--token", "wrong")
    assert code == 1 and err.startswith(f"error: {proxy.url} did not accept this token: ")


def test_ls_without_a_token_says_it_lists_public_repositories_only(cli, anonymous):
    anonymous.push("acme/open", {"train.jsonl": b"{}\n"}, visibility="public")
    anonymous.push("acme/closed", {"train.jsonl": b"{}\n"})
    code, out, err = cli("ls", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == ["acme/open"]
    assert err == ("note: no token, so only public repositories are listed "
                   "(run `pefthub login` or set PEFTHUB_TOKEN to see yours)\n")
    # a private repository is not found without a token: say that a token may be what is missing
    code, out, err = cli("pull", "acme/closed")
    assert (code, out) == (1, "")
    assert said(err).splitlines() == [
        "error: 404 not_found: Repository `acme/closed` not found (or you have no access to it).",
        "note: no token was sent, so only public repositories are visible: run `pefthub login` or set PEFTHUB_TOKEN"]


def test_no_hub_at_the_url_is_said_at_once_with_how_to_start_one(cli, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PEFTHUB_URL", url)
    monkeypatch.setenv("PEFTHUB_TOKEN", "t")
    said = (f"error: no hub answers at {url} (connection refused). Start one with `pefthub-server up`, "
            "or point PEFTHUB_URL (or `pefthub login --url`) at the hub you mean.\n")
    for argv in (["whoami"], ["jobs", "ls"], ["info", "acme/bot"], ["login", "--token", "t"]):
        started = time.monotonic()
        assert cli(*argv) == (1, "", said), argv
        assert time.monotonic() - started < 2  # was 3 to 11 s of silent retries
    monkeypatch.delenv("PEFTHUB_TOKEN")
    code, _, err = cli("ls")
    assert code == 1 and err.splitlines()[-1] == said.strip()


def test_pushing_an_adapter_without_a_base_names_the_flag(cli, env, tmp_path):
    env.base()
    files = env.adapter_files()
    settings = json.loads(files["adapter_config.json"])
    settings["base_model_name_or_path"] = "/home/me/llama"  # a local path, not a hub repository
    files["adapter_config.json"] = json.dumps(settings).encode()
    code, out, err = cli("push", str(write_tree(tmp_path / "bot", files)), "acme/bot", "--kind", "adapter")
    assert (code, out) == (1, "")
    assert said(err) == ("error: 400 base_model_required: acme/bot is an adapter, and an adapter is filed against the "
                   "model it was trained on: add `--base-model acme/base` (a model repository on the hub; push it "
                   "first if it is not there).\n")


def test_a_missing_alias_or_version_is_said_as_what_it_is(cli, env):
    env.push("acme/data", {"train.jsonl": b"1\n"}, aliases=["prod"])
    env.push("acme/data", {"train.jsonl": b"2\n"})
    code, _, err = cli("pull", "acme/data@staging")
    assert (code, said(err)) == (1, "error: 404 not_found: `acme/data` has no alias `staging` (its aliases: `prod`).\n")
    code, _, err = cli("info", "acme/data@7")
    assert (code, said(err)) == (1, "error: 404 not_found: `acme/data` has no version 7 (latest is 2).\n")


def test_jobs_show_logs_cancel_take_the_short_id_the_cli_prints(cli, env, job_inputs):
    from pefthub_server.jobs.models import Job

    job = env.train(output="acme/a")
    short = job.id[:12]
    code, out, _ = cli("jobs", "show", short)
    assert code == 0 and out.splitlines()[0] == job.id
    code, out, _ = cli("jobs", "logs", short)
    assert code == 0 and out.split()[-2:] == ["status", "queued"]
    # another job sharing the first 12 digits: the prefix is ambiguous, and the error names both
    twin = Job.objects.get(pk=job.id)
    other = "0" if job.id[12] != "0" else "1"
    twin.pk, twin.idempotency_key = uuid.UUID(short + other * 20), None
    twin.save(force_insert=True)
    code, out, err = cli("jobs", "cancel", short)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: 400 ambiguous_job_id: Job id `{short}` is ambiguous: it matches ")
    assert job.id in err and twin.pk.hex in err
    code, out, _ = cli("jobs", "cancel", job.id[:13])
    assert (code, out) == (0, f"{job.id} cancelled\n")
    code, _, err = cli("jobs", "show", short[:JOB_ID_MIN_PREFIX - 1])
    assert code == 1 and "too short: give at least 8 of its hex digits" in err

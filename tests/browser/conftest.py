"""Browser fixtures: a real `pefthub-server up` (with its embedded worker) holding a small world, and Debian's
Chromium driven by Playwright.

The world, made as users make it: `pefthub-server adduser` for alice (admin of team acme), bob (a write member
of acme, with a password), carol (an outsider, with a password) and root (a staff superuser, with a password);
alice pushes a tiny base, a dataset and the team's private adapter `acme/support-bot` (with a model card and the
`prod` alias) with the SDK, and trains `acme/support-bot-tuned` through the worker (a few steps, so metric
events exist); carol pushes a private dataset of her own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from examples import tiny
from tests.e2e.conftest import BIN, UpServer, running_hub

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
#: where the tests leave screenshots of the main pages (the README shows two of them)
SCREENSHOTS = ROOT / "docs" / "screenshots"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PASSWORDS = {"bob": "bob-walks-the-hub-2026", "carol": "carol-reads-alone-2026", "root": "root-sees-everything-2026"}
CARD = """# Support bot

Answers **support** questions for the acme team.

| split | loss |
|-------|------|
| eval  | 1.23 |
"""
#: a training job the embedded worker finishes in seconds on a CPU, reporting a metric event every step
QUICK = {"max_steps": 12, "logging_steps": 1, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 64, "r": 8}


@dataclass
class World:
    server: UpServer
    tokens: dict[str, str]  # username -> the token `adduser` printed
    trained: str  # id of the finished training job
    repos: list[str]  # every repository, as ns/name

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, username: str, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens[username]}"}
        return requests.request(method, f"{self.url}/api/v1/{path}", headers=headers, timeout=30, **kwargs)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium: the tests skip without it on a developer's machine, and fail without it in CI."""
    if not Path(CHROMIUM).exists():
        reason = f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
        if _in_ci():
            pytest.fail(f"{reason}, and CI must run the browser tests")
        pytest.skip(reason)
    return CHROMIUM


def _adduser(server: UpServer, username: str, *args: str) -> str:
    """`pefthub-server adduser` in a fresh process, the password (if any) piped to --password-stdin; the token."""
    password = PASSWORDS.get(username)
    command = [str(BIN / "pefthub-server"), "adduser", username, *args]
    if password:
        command.append("--password-stdin")
    done = subprocess.run(command, env=server.env, input=f"{password}\n" if password else "", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def world(chromium, tmp_path_factory, tiny_base) -> Iterator[World]:
    from pefthub import Hub

    work = tmp_path_factory.mktemp("browser-hub")
    adapter, data, notes = work / "support-bot", work / "support-data", work / "notes"
    tiny.train_lora(tiny_base, adapter, steps=2, seed=3)
    (adapter / "README.md").write_text(CARD)
    data.mkdir()
    tiny.make_dataset(data / "train.jsonl", rows=32)
    shutil.copytree(data, notes)
    with running_hub(work / "server") as server:  # with its embedded worker
        tokens = {"alice": server.adduser("alice", "--team", "acme", "--role", "admin"),
                  "bob": _adduser(server, "bob", "--team", "acme", "--role", "write"),
                  "carol": _adduser(server, "carol"),
                  "root": _adduser(server, "root", "--staff")}
        with Hub(url=server.url, token=tokens["alice"], cache_dir=work / "cache", progress=False) as hub:
            hub.push(tiny_base, "acme/llama-tiny")
            hub.push(data, "acme/support-data", kind="dataset")
            hub.push(adapter, "acme/support-bot", base_model="acme/llama-tiny", aliases=["prod"],
                     message="First cut\n\nTrained 2 steps.")
            job = hub.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/support-bot-tuned",
                            **QUICK)
            with Hub(url=server.url, token=tokens["carol"], cache_dir=work / "cache-carol", progress=False) as carol:
                carol.push(notes, "carol/notes", kind="dataset")
            done = job.wait(timeout=300)
            assert done.status == "succeeded", (done.status, (work / "server" / "server.log").read_text()[-4000:])
        yield World(server, tokens, job.id, ["acme/llama-tiny", "acme/support-data", "acme/support-bot",
                                             "acme/support-bot-tuned", "carol/notes"])


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, world):
    """``new_page(viewport=LAPTOP)``: a page in a fresh context (its own cookies) that may read the clipboard."""
    contexts = []

    def make(viewport=LAPTOP):
        context = browser.new_context(base_url=world.url, viewport=viewport,
                                      permissions=["clipboard-read", "clipboard-write"])
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def sign_in(page, username: str, *, password: str | None = None, token: str | None = None, next: str = "/"):
    """Sign in through /account/sign-in, with a password or an API token; lands on ``next``."""
    page.goto(f"/account/sign-in?next={next}")
    if token is not None:
        page.fill("#token", token)
        button = page.get_by_role("button", name="Sign in with token")
    else:
        page.fill("#username", username)
        page.fill("#password", password or PASSWORDS[username])
        button = page.locator("form:has(#password) button[type=submit]")
    with page.expect_navigation():
        button.click()
    assert urlsplit(page.url).path == next, (page.url, page.locator("main").inner_text()[:500])


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path

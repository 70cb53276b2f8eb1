"""The web hub in a real browser (Debian's Chromium, headless, through Playwright) against `pefthub-server up`:
what issue 10's acceptance asks, as a person clicks it. Screenshots of the main pages go to docs/screenshots/."""

from __future__ import annotations

import re

from tests.browser.conftest import PASSWORDS, PHONE, screenshot, sign_in


def metric_points(world, job_id: str) -> int:
    """How many loss / eval_loss values the job's metric events carry, read through the API."""
    events, after = [], 0
    while True:
        page = world.api("bob", "GET", f"jobs/{job_id}/events", params={"after": after}).json()
        events += page["events"]
        if not page["events"]:
            break
        after = page["next_after"]
    metrics = [e["data"] for e in events if e["type"] == "metric"]
    return sum(("loss" in d) + ("eval_loss" in d) for d in metrics)


def test_bob_signs_in_finds_the_team_adapter_and_copies_its_snippet(world, new_page):
    page = new_page()
    sign_in(page, "bob")
    assert page.locator("nav").get_by_text("bob").count() >= 1
    screenshot(page, "home")

    page.fill("input[name=q]", "support-bot")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    results = page.locator("ul.repos li.repo a.repo-name")
    assert sorted(results.all_inner_texts()) == ["acme/support-bot", "acme/support-bot-tuned"]
    results.get_by_text("acme/support-bot", exact=True).click()
    page.wait_for_url("**/acme/support-bot")

    card = page.locator("article.card")
    assert card.locator("h1").inner_text() == "Support bot"
    assert card.locator("strong").first.inner_text() == "support"  # markdown rendered, not shown as **support**
    assert card.locator("table td", has_text="1.23").count() == 1  # the card's own table, as a table
    lineage = page.locator("svg.lineage")  # base -> this adapter, drawn by the server
    assert lineage.count() == 1 and "acme/llama-tiny@1" in lineage.text_content()
    files = page.locator("section[aria-labelledby=files-h] tbody tr td:first-child a").all_inner_texts()
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    screenshot(page, "repository")

    snippet = page.locator("[data-copy]").first
    expected = page.locator(f"#{snippet.get_attribute('data-copy')}").inner_text()
    assert "acme/support-bot" in expected
    snippet.click()
    assert page.evaluate("navigator.clipboard.readText()") == expected

    page.locator("section[aria-labelledby=versions-h] tbody a", has_text="1").first.click()
    page.wait_for_url("**/acme/support-bot/versions/1")
    assert "acme/llama-tiny@1" in page.locator("svg.lineage").text_content()
    screenshot(page, "version")


def test_bob_signs_in_with_a_token_creates_and_revokes_one(world, new_page):
    page = new_page()
    sign_in(page, "bob", token=world.tokens["bob"], next="/account/tokens")
    page.fill("input[name=name]", "browser-made")
    page.select_option("select[name=scope]", "read")
    with page.expect_navigation():
        page.get_by_role("button", name="Create token").click()
    secret = page.locator("#secret").inner_text().strip()
    assert secret.startswith("phub_")
    world.tokens["bob-made"] = secret
    assert world.api("bob-made", "GET", "repos/acme/support-bot").status_code == 200

    page.goto("/account/tokens")
    assert secret not in page.content()  # shown once
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile(r"Revoke token browser-made")).click()
    row = page.locator("tbody tr", has_text="browser-made")
    assert "revoked" in row.inner_text()
    assert world.api("bob-made", "GET", "repos/acme/support-bot").status_code == 401


def test_the_job_page_charts_every_metric_event_of_a_real_worker_run(world, new_page):
    points = metric_points(world, world.trained)
    assert points >= 12  # a loss per step, and the eval losses
    page = new_page()
    sign_in(page, "bob", next=f"/jobs/{world.trained}")
    assert page.locator("#job-status").inner_text() == "succeeded"
    chart = page.locator("svg.chart")
    assert chart.locator("circle[data-series]").count() == points
    assert int(chart.get_attribute("data-points")) == points
    page.evaluate("document.getElementById('job-status').closest('dl').scrollIntoView()")
    screenshot(page, "job")


def test_a_live_job_page_shows_its_progress_advance(world, new_page):
    job = world.api("bob", "POST", "jobs", json={
        "type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/support-data", "output": "acme/support-bot-long",
        "hyperparameters": {"max_steps": 2000, "logging_steps": 1, "batch_size": 2, "max_seq_length": 32, "r": 4}})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    try:
        page = new_page()
        sign_in(page, "bob", next=f"/jobs/{job_id}")
        progress = page.locator("#job-progress")
        page.wait_for_function("() => document.getElementById('job-progress').value > 0", timeout=90_000)
        first = float(progress.evaluate("p => p.value"))
        page.wait_for_function(f"() => document.getElementById('job-progress').value > {first}", timeout=30_000)
        assert page.locator("#job-status").inner_text() == "running"
        assert page.locator("svg.chart circle[data-series]").count() > 0
    finally:
        world.api("bob", "POST", f"jobs/{job_id}/cancel")


def test_carol_can_neither_find_nor_open_the_team_adapter(world, new_page):
    page = new_page()
    sign_in(page, "carol")
    listed = page.locator("ul.repos li.repo a.repo-name").all_inner_texts()
    assert listed == ["carol/notes"]
    assert "1 repository" in page.locator("main").inner_text()
    page.goto("/?q=support")
    main = page.locator("main").inner_text()
    assert "support-bot" not in main and "No repositories match" in main
    for path in ("/acme/support-bot", "/acme/support-bot/versions/1", f"/jobs/{world.trained}"):
        response = page.goto(path)
        assert response.status == 404, path
        assert "support-bot" not in page.content(), path
    assert page.goto("/acme").status == 200  # the team is no secret; its private repositories are
    assert "support-bot" not in page.locator("main").inner_text()


def test_the_staff_superuser_sees_every_repository(world, new_page):
    page = new_page()
    sign_in(page, "root")
    assert sorted(page.locator("ul.repos li.repo a.repo-name").all_inner_texts()) == sorted(world.repos)
    assert page.goto("/carol/notes").status == 200


def test_the_home_page_at_phone_width(world, new_page):
    page = new_page(PHONE)
    sign_in(page, "bob")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing wider than the phone
    screenshot(page, "home-phone")


def test_the_staff_superuser_moves_an_alias_and_reads_a_job_in_the_admin(world, new_page):
    page = new_page()
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORDS["root"])
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    page.goto(f"/admin/jobs/job/{world.trained}/change/")
    events = world.api("bob", "GET", f"jobs/{world.trained}/events").json()["events"]
    assert page.locator("tr.job-event").count() == len(events) <= 50
    assert page.locator("input[name=_save], .deletelink").count() == 0  # a record: nothing to save or delete
    assert page.evaluate("document.documentElement.scrollHeight") < 5000  # chart + 50 events (was 13,600 px)

    # the "move" action goes through registry.aliases, whose refusal comes back as the page's message
    page.goto("/admin/registry/alias/?q=support-bot")
    page.locator("#result_list tbody tr", has_text="prod").locator("input[type=checkbox]").check()
    page.select_option("select[name=action]", "move")
    page.fill("input[name=revision]", "9")
    with page.expect_navigation():
        page.locator("button[name=index]").click()
    assert page.locator(".messagelist").inner_text() == "Alias acme/support-bot@prod: `acme/support-bot` has no version 9 " \
        "(latest is 1)."

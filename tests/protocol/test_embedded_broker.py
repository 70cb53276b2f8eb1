"""The embedded (filesystem) broker keeps every file it writes under its own folder."""

from __future__ import annotations

from celery import Celery

from pefthub.protocol.jobs import celery_config


def test_embedded_broker_writes_nothing_outside_its_folder(tmp_path, monkeypatch):
    cwd, broker_dir = tmp_path / "cwd", tmp_path / "broker"
    cwd.mkdir()
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to the configuration
    monkeypatch.chdir(cwd)  # kombu's default control folder is ./control, relative to where the process started
    app = Celery("t")
    app.conf.update(celery_config(None, broker_dir))
    app.send_task("pefthub.train", args=["job-id"], queue="gpu")
    assert list(cwd.iterdir()) == []
    assert (broker_dir / "control" / "gpu.exchange").is_file()
    assert len(list((broker_dir / "queue").iterdir())) == 1

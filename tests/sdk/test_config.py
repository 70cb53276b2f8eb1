from __future__ import annotations

import json
import stat

from pefthub import Hub
from pefthub._config import config_path, write_config


def test_defaults(tmp_path):
    hub = Hub()
    assert hub.url == "http://127.0.0.1:8000"
    assert hub.token is None
    assert hub.cache_dir == tmp_path / "home" / ".cache" / "pefthub"
    assert hub.progress is True


def test_arguments_beat_env_beat_config_file(monkeypatch, tmp_path):
    write_config("http://saved:1", "saved-token")
    assert (Hub().url, Hub().token) == ("http://saved:1", "saved-token")

    monkeypatch.setenv("PEFTHUB_URL", "http://saved:1/")
    monkeypatch.setenv("PEFTHUB_TOKEN", "env-token")
    monkeypatch.setenv("PEFTHUB_CACHE", str(tmp_path / "envcache"))
    monkeypatch.setenv("PEFTHUB_DISABLE_PROGRESS_BARS", "1")
    hub = Hub()
    assert (hub.url, hub.token, hub.cache_dir, hub.progress) == (
        "http://saved:1", "env-token", tmp_path / "envcache", False,
    )

    hub = Hub("http://arg:2", "arg-token", cache_dir=tmp_path / "argcache", progress=True)
    assert (hub.url, hub.token, hub.cache_dir, hub.progress) == (
        "http://arg:2", "arg-token", tmp_path / "argcache", True,
    )


def test_saved_token_is_not_sent_to_another_hub(monkeypatch):
    write_config("http://saved:1", "saved-token")
    monkeypatch.setenv("PEFTHUB_URL", "http://other:2")
    assert Hub().token is None
    assert Hub("http://saved:1/").token == "saved-token"


def test_config_file_is_private_json(tmp_path):
    path = write_config("http://hub:8000/", "secret")
    assert path == config_path() == tmp_path / "config" / "config.json"
    assert json.loads(path.read_text()) == {"url": "http://hub:8000", "token": "secret"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_config("http://hub:8000", "secret-2")  # rewriting keeps it private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == "secret-2"
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp file left


def test_context_manager_closes_the_session(monkeypatch):
    closed = []
    with Hub() as hub:
        monkeypatch.setattr(hub._http.session, "close", lambda: closed.append(True))
    assert closed == [True]
    assert "secret" not in repr(Hub(token="secret"))

"""Test settings: the real settings module, with a throw-away data dir per test process.

DATABASE_URL selects PostgreSQL (pytest-django creates and drops `test_<name>`);
without it, SQLite in the data dir.
"""

from __future__ import annotations

import os
import tempfile

os.environ["PEFTHUB_DATA_DIR"] = tempfile.mkdtemp(prefix="pefthub-test-")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production-0123456789")
os.environ.pop("PEFTHUB_STORAGE", None)  # tests choose the backend per test

from pefthub_server.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

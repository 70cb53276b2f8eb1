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
# Jobs go to a real Redis; a database index of their own, emptied by the tests that read it.
os.environ.setdefault("CELERY_BROKER_URL", os.environ.get("PEFTHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
os.environ.setdefault("PEFTHUB_JOB_LEASE_SECONDS", "4")
os.environ.setdefault("PEFTHUB_REAP_INTERVAL", "1")

from pefthub_server.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# In-process requests keep a token they looked up for the whole test however slow the machine, so a counted
# request costs the same queries every run; tests of the cache's lifetime set their own.
PEFTHUB_TOKEN_CACHE_SECONDS = 3600

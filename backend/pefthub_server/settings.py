"""PEFT Hub settings: one module, every knob from the environment.

Defaults run on a bare machine (SQLite, a local blob directory, an embedded broker);
each swaps for the distributed part by env vars alone. See the configuration table in
the README.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from pefthub.protocol.limits import MAX_FILE_SIZE
from pefthub_server.core.env import env_bool, env_int, env_list, env_rate, env_secret, env_str

DATA_DIR = Path(env_str("PEFTHUB_DATA_DIR", ".pefthub")).expanduser().resolve()


def _default_secret_key() -> str:
    """A random key persisted in the data dir, so signed URLs survive restarts."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_secret("DJANGO_SECRET_KEY") or _default_secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
# Base for URLs handed to clients (signed blob URLs); defaults to the request's host.
PUBLIC_URL = env_str("PEFTHUB_PUBLIC_URL").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",  # admin sign-in lockout
    "pefthub_server",  # the project's own commands: `up`
    "pefthub_server.core",
    "pefthub_server.registry",
    "pefthub_server.jobs",
    "pefthub_server.web",
]

MIDDLEWARE = [
    "pefthub_server.core.middleware.HeadWithoutBodyMiddleware",  # first: it sees every response
    "pefthub_server.core.middleware.RequestIdMiddleware",  # every later log line carries the request id
    "pefthub_server.core.middleware.AccessMiddleware",  # one access line and metrics per request
    "pefthub_server.ops.OperationsMiddleware",  # /healthz /readyz /metrics: before the host check and https redirect
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "pefthub_server.core.guards.ControlCharacterGuard",  # NUL in a URL: a 400, never a database error
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "pefthub_server.core.auth.SessionTokenMiddleware",  # pages: the session's token (its scope caps the page), re-checked each request
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: it answers a locked-out sign-in
]

ROOT_URLCONF = "pefthub_server.urls"
WSGI_APPLICATION = "pefthub_server.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_sqlite_path = DATA_DIR / "db.sqlite3"
# Each server thread keeps its own connection for DATABASE_CONN_MAX_AGE seconds (0: one per request), checked
# before a request reuses it (CONN_HEALTH_CHECKS), so a restarted database costs one failed check, not a 500.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{_sqlite_path}", conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # BEGIN IMMEDIATE serialises writers up front instead of failing on lock upgrade;
        # WAL lets readers run beside the writer.
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file (not :memory:) so a live server's threads share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test_db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# Admin and web sign-in (django-axes): after PEFTHUB_ADMIN_LOCKOUT_FAILURES wrong passwords a username is
# locked out from that address for PEFTHUB_ADMIN_LOCKOUT_MINUTES (every failure while locked starts
# the wait again); others still sign in. `pefthub-server axes_reset_username NAME` unlocks sooner.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("PEFTHUB_ADMIN_LOCKOUT_FAILURES", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("PEFTHUB_ADMIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no banner on every `pefthub-server` command; lockouts are still logged
AXES_CLIENT_IP_CALLABLE = "pefthub_server.core.throttling.client_address"
AXES_LOCKOUT_CALLABLE = "pefthub_server.core.throttling.admin_lockout"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("PEFTHUB_STATIC_ROOT") or DATA_DIR / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True

PEFTHUB_STORAGE = env_str("PEFTHUB_STORAGE") or f"file://{DATA_DIR / 'blobs'}"
# Endpoint written into presigned URLs when clients reach S3 by another name than the server.
PEFTHUB_S3_PUBLIC_ENDPOINT = env_str("PEFTHUB_S3_PUBLIC_ENDPOINT")
PEFTHUB_HF_TREE_PAGE_SIZE = env_int("PEFTHUB_HF_TREE_PAGE_SIZE", 1000)  # entries per page of /hf/…/tree, as the Hub
PEFTHUB_URL_TTL = env_int("PEFTHUB_URL_TTL", 3600)  # seconds a signed blob URL stays valid
PEFTHUB_MAX_FILE_SIZE = env_int("PEFTHUB_MAX_FILE_SIZE", MAX_FILE_SIZE)  # S3's single-PUT limit by default
# Every request body but a signed blob upload, refused by the server before it is read. 16 MiB holds
# a 10,000-file commit with 512-character paths (6.2 MB; 1.5 MB with usual names) and a full batch of
# 1,000 job events of 10,000 characters (10 MB).
PEFTHUB_MAX_REQUEST_BODY = env_int("PEFTHUB_MAX_REQUEST_BODY", 16 * 1024**2)
DATA_UPLOAD_MAX_MEMORY_SIZE = PEFTHUB_MAX_REQUEST_BODY

# Jobs and the queue. The message is the job id only; workers talk to the API.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")  # empty: the embedded filesystem broker in the data dir
PEFTHUB_BROKER_DIR = Path(env_str("PEFTHUB_BROKER_DIR") or DATA_DIR / "broker")
PEFTHUB_JOB_LEASE_SECONDS = env_int("PEFTHUB_JOB_LEASE_SECONDS", 120)
PEFTHUB_CHECKPOINTS_KEPT = env_int("PEFTHUB_CHECKPOINTS_KEPT", 3)  # a job's newest checkpoints kept; older ones go
# A queued job whose message was lost (broker restarted or wiped, worker died before the
# ack) is sent again by the reaper this long after its last dispatch (doubling each time).
PEFTHUB_REDISPATCH_SECONDS = env_int("PEFTHUB_REDISPATCH_SECONDS", 300)
PEFTHUB_REAP_INTERVAL = env_int("PEFTHUB_REAP_INTERVAL", 15)
# A worker says hello every third of this; one not heard from for this long no longer counts
# as connected when the hub decides whether a job waits for a worker that can run it.
PEFTHUB_WORKER_PRESENCE_SECONDS = env_int("PEFTHUB_WORKER_PRESENCE_SECONDS", 60)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["pefthub_server.core.auth.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["pefthub_server.core.auth.JobTokenPolicy"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["pefthub_server.core.parsers.JSONParser"],  # bounded size and depth, storable strings
    "EXCEPTION_HANDLER": "pefthub_server.core.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "pefthub_server.core.schema.HubAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Failed authentications allowed per client address and per token prefix (core.throttling).
    "DEFAULT_THROTTLE_RATES": {
        "auth_failures_per_address": env_rate("PEFTHUB_AUTH_FAIL_RATE", "20/min"),
        "auth_failures_per_prefix": env_rate("PEFTHUB_AUTH_FAIL_PREFIX_RATE", "20/min"),
    },
}

# Throttle counts live here: in each server process by default; with PEFTHUB_CACHE_URL=redis://…
# every process (`serve --workers N`, several hosts) shares them.
PEFTHUB_CACHE_URL = env_str("PEFTHUB_CACHE_URL")
if PEFTHUB_CACHE_URL and not PEFTHUB_CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"PEFTHUB_CACHE_URL={PEFTHUB_CACHE_URL!r} is not a Redis URL; use redis://host:port/db")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": PEFTHUB_CACHE_URL}
    if PEFTHUB_CACHE_URL else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Pages of the repository list, in each process, under the catalogue generation (registry.api.page_cache):
    # the most recently used 512 pages (~25 MB at 100 rows a page).
    "lists": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "pefthub-lists",
              "TIMEOUT": None, "OPTIONS": {"MAX_ENTRIES": 512}},
}
# Each process keeps a valid user token it looked up for this many seconds (0: off): a revocation made
# in another process takes effect within it (core.tokens).
PEFTHUB_TOKEN_CACHE_SECONDS = env_int("PEFTHUB_TOKEN_CACHE_SECONDS", 1)

SPECTACULAR_SETTINGS = {
    "TITLE": "PEFT Hub API",
    "DESCRIPTION": "Catalogue, push and pull parameter-efficient fine-tuning adapters.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # 3.1: null is a JSON Schema type, so a nullable object (a job's result) validates everywhere.
    "OAS_VERSION": "3.1.0",
    # Served from the package, not a CDN: the hub must work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "JobTypeEnum": "pefthub_server.jobs.models.Job.Type",
        "JobEventTypeEnum": "pefthub_server.jobs.models.JobEvent.Type",
        "RepoKindEnum": "pefthub_server.registry.models.Repository.Kind",
        "TokenScopeEnum": "pefthub_server.core.models.Scope",
        "RequestedScopeEnum": "pefthub_server.core.models.USER_SCOPES",
    },
}

# PEFTHUB_LOG_FORMAT=json (the default of `serve`): one JSON object per line with time, level, logger,
# message and the request id (pefthub.protocol.logs); text (the default of `up`): the message alone.
# The access log (logger pefthub.access: a line per request) is on with json, off with text;
# PEFTHUB_ACCESS_LOG=1 or 0 says otherwise.
PEFTHUB_LOG_FORMAT = env_str("PEFTHUB_LOG_FORMAT", "text")
if PEFTHUB_LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"PEFTHUB_LOG_FORMAT={PEFTHUB_LOG_FORMAT!r}: use json or text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "pefthub.protocol.logs.ContextFilter"}},
    "formatters": {"json": {"()": "pefthub.protocol.logs.JsonFormatter"},
                   "text": {"format": "%(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": PEFTHUB_LOG_FORMAT,
                             "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": env_str("PEFTHUB_LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"},
                "pefthub.access": {"level": "INFO" if env_bool("PEFTHUB_ACCESS_LOG", PEFTHUB_LOG_FORMAT == "json")
                                   else "WARNING"}},
}

# Operations endpoints (pefthub_server.ops): /readyz waits this long for its checks; /metrics needs
# this bearer token when set (open to whoever reaches the port otherwise, like most exporters).
PEFTHUB_READY_TIMEOUT = float(env_str("PEFTHUB_READY_TIMEOUT", "2"))
PEFTHUB_METRICS_TOKEN = env_secret("PEFTHUB_METRICS_TOKEN")

# A reverse proxy's X-Forwarded-* headers are honoured (by the server `up` runs) only from this
# address, or from anyone with `*` when only the proxy can reach the hub; everyone else's are cleared.
PEFTHUB_TRUSTED_PROXY = env_str("PEFTHUB_TRUSTED_PROXY")
PEFTHUB_TRUSTED_PROXY_HEADERS = env_str(
    "PEFTHUB_TRUSTED_PROXY_HEADERS", "x-forwarded-proto x-forwarded-for x-forwarded-host").replace(",", " ").split()

# Production safety: PEFTHUB_SECURE=1 behind a TLS proxy (PEFTHUB_TRUSTED_PROXY says which);
# `manage.py check --deploy` is clean then.
if env_bool("PEFTHUB_SECURE", False):
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = 31536000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

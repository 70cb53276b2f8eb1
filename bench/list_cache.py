"""The list of 100 repositories in-process, cached and not: ms of this process's CPU (and wall) per request.

    python bench/list_cache.py [--adapters 10000] [--requests 500] [--postgres URL] [--db NAME]

Seeds a PostgreSQL database (`--db`, dropped and recreated, migrated, ANALYZEd) with alice (admin of team acme), a
public base and `--adapters` adapters of acme on it, a third each private, internal and public. Then it sends
`GET /api/v1/repos?page_size=100` with alice's token through the whole Django stack (every middleware, DRF; Django's
test client, so no sockets and no HTTP parsing), `--requests` times each way:
- uncached: the page cache emptied before each request: the page's own queries (counts, page) and rendering,
  plus the generation's query;
- hit: the same page again: the generation's query and a lookup;
- 304: a hit sent with `If-None-Match` of its ETag.
CPU is this process's (Python's side); PostgreSQL's own work shows in wall minus CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(client, n: int, *, before=None, **headers) -> tuple[float, float]:
    """(CPU ms, wall ms) per request of ``n`` list requests, after 20 unmeasured."""
    for i in range(n + 20):
        if i == 20:
            cpu, wall = time.process_time(), time.perf_counter()
        if before:
            before()
        response = client.get("/api/v1/repos", {"page_size": 100}, **headers)
        assert response.status_code in (200, 304), response.content[:300]
    return (time.process_time() - cpu) / n * 1000, (time.perf_counter() - wall) / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="pefthub_bench_list_cache", help="dropped and recreated")
    args = parser.parse_args()

    import psycopg

    with psycopg.connect(f"{args.postgres}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{args.db}"')
    os.environ.update(DATABASE_URL=f"{args.postgres}/{args.db}", DJANGO_SETTINGS_MODULE="pefthub_server.settings",
                      PEFTHUB_DATA_DIR=tempfile.mkdtemp(prefix="pefthub-bench-list-"), DJANGO_DEBUG="0",
                      DJANGO_ALLOWED_HOSTS="testserver", DJANGO_SECRET_KEY="bench-only-secret-key-0123456789abcdef")
    sys.path[:0] = [str(ROOT / "backend"), str(ROOT / "sdk")]
    import django

    django.setup()
    from django.core.cache import caches
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from pefthub_server.core.tokens import token_create
    from pefthub_server.registry.models import Namespace, Repository
    from pefthub_server.registry.teams import user_ensure

    call_command("migrate", verbosity=0)
    alice = user_ensure(username="alice", team="acme", role="admin")
    acme = Namespace.objects.get(name="acme")
    base = Repository.objects.create(namespace=acme, name="llama-tiny", kind="model", visibility="public",
                                     latest_number=1)
    Repository.objects.bulk_create([
        Repository(namespace=acme, name=f"adapter-{i:05d}", kind="adapter", base_model=base, peft_type="LORA",
                   latest_number=1, visibility=("private", "internal", "public")[i % 3], description="an adapter")
        for i in range(args.adapters)], batch_size=1000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token_create(user=alice, scope='read')[1]}")

    lists = caches["lists"]
    uncached = measure(client, args.requests, before=lists.clear)
    hit = measure(client, args.requests)
    etag = client.get("/api/v1/repos", {"page_size": 100})["ETag"]
    not_modified = measure(client, args.requests, HTTP_IF_NONE_MATCH=etag)
    print(f"GET /api/v1/repos?page_size=100, {args.adapters} adapters, {args.requests} requests each, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'request':<28}{'CPU ms':>8}{'wall ms':>9}{'uncached / this (CPU)':>24}")
    for name, (cpu, wall) in (("uncached (cache emptied)", uncached), ("hit", hit), ("304 (If-None-Match)", not_modified)):
        print(f"{name:<28}{cpu:>8.2f}{wall:>9.2f}{uncached[0] / cpu:>23.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

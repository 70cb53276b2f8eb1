"""Seed the hub's catalogue for bench/registry.py: copies of real pushed adapter versions, in bulk, through the ORM.

    DJANGO_SETTINGS_MODULE=pefthub_server.settings python bench/_registry_seed.py TOTAL PREFIX

Run in a child with the hub's settings (its DATABASE_URL) after the bench has pushed one adapter per base with the SDK
(`PREFIX00000`, `PREFIX00001`, ...: the templates). Adds `PREFIX{i:05d}` up to TOTAL, each a copy of template
``i % templates`` made of the rows `push.version_create` made for the template: the repository (same base, kind,
peft type, visibility), version 1 (same manifest, digest, adapter config, metadata, base version), its files (the same
blobs) and its `prod` alias with the alias move that recorded it.
"""

from __future__ import annotations

import sys

import django

BATCH = 1000


def seed(total: int, prefix: str) -> int:
    from django.db import transaction

    from pefthub_server.registry.models import Alias, AliasMove, Repository, Version, VersionFile

    templates = list(Repository.objects.filter(name__startswith=prefix).select_related("namespace").order_by("name"))
    versions = {v.repository_id: v for v in Version.objects.filter(repository__in=templates, number=1)}
    files = {v.pk: list(v.files.all()) for v in versions.values()}
    made = 0
    for start in range(len(templates), total, BATCH):
        with transaction.atomic():
            stop = min(total, start + BATCH)
            repos = [templates[i % len(templates)] for i in range(start, stop)]
            new_repos = Repository.objects.bulk_create([
                Repository(namespace=t.namespace, name=f"{prefix}{i:05d}", kind=t.kind, visibility=t.visibility,
                           description=t.description, base_model_id=t.base_model_id, latest_number=1,
                           peft_type=t.peft_type, created_by_id=t.created_by_id)
                for i, t in zip(range(start, stop), repos)
            ])
            new_versions = Version.objects.bulk_create([
                Version(repository=r, number=1, digest=(v := versions[t.pk]).digest, message=v.message,
                        metadata=v.metadata, adapter_config=v.adapter_config, fingerprint=v.fingerprint,
                        base_version_id=v.base_version_id, size=v.size, file_count=v.file_count,
                        created_by_id=v.created_by_id)
                for r, t in zip(new_repos, repos)
            ])
            VersionFile.objects.bulk_create([
                VersionFile(version=nv, path=f.path, blob_id=f.blob_id, size=f.size)
                for nv, t in zip(new_versions, repos) for f in files[versions[t.pk].pk]
            ])
            Alias.objects.bulk_create([Alias(repository=r, name="prod", version=nv, updated_by_id=r.created_by_id)
                                       for r, nv in zip(new_repos, new_versions)])
            AliasMove.objects.bulk_create([AliasMove(repository=r, alias="prod", from_number=None, to_number=1,
                                                     moved_by_id=r.created_by_id) for r in new_repos])
        made += len(new_repos)
    return made


if __name__ == "__main__":
    django.setup()
    print(seed(int(sys.argv[1]), sys.argv[2]))

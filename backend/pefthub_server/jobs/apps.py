from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "pefthub_server.jobs"
    label = "jobs"
    verbose_name = "Jobs"

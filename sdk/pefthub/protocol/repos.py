"""Repositories and who may touch them: kinds, visibilities, team roles, token scopes."""

from __future__ import annotations

ADAPTER, MODEL, DATASET = "adapter", "model", "dataset"
KINDS = (ADAPTER, MODEL, DATASET)

#: private: members of the namespace; internal: any signed-in user; public: anyone
PRIVATE, INTERNAL, PUBLIC = "private", "internal", "public"
VISIBILITIES = (PRIVATE, INTERNAL, PUBLIC)

#: a team member's role, weakest first
ROLES = ("read", "write", "admin")

#: what a token may do; a token mints only tokens its own scope covers. ``job`` is the
#: token a worker gets when it claims a job: it grants nothing by scope, only the calls of
#: its own job (read the pinned inputs, push the result, report), and dies with the job.
SCOPES = ("read", "write", "worker", "admin", "job")

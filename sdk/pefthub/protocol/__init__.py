"""The contract PEFT Hub's three parts share: standard library only, one home per rule.

The server (``pefthub_server``), the workers (``pefthub_worker``) and the SDK import
these modules and write none of their rules again:

- :mod:`~pefthub.protocol.refs`: the grammar of namespaces, names, aliases, revisions and
  ``namespace/name[@revision]`` references, and Hugging Face revisions;
- :mod:`~pefthub.protocol.manifest`: path rules, manifest entries, the canonical digest;
- :mod:`~pefthub.protocol.safetensors`: a strict, bounded safetensors header reader;
- :mod:`~pefthub.protocol.peft`: peft types, training methods, what merges, target matching;
- :mod:`~pefthub.protocol.peft_compat`: which config keys each peft release knows;
- :mod:`~pefthub.protocol.specs`: job specs (train, merge) and job requests;
- :mod:`~pefthub.protocol.jobs`: job types, statuses, events, queues and the Celery settings;
- :mod:`~pefthub.protocol.repos`: repository kinds, visibilities, roles and token scopes;
- :mod:`~pefthub.protocol.limits`: every size and count bound;
- :mod:`~pefthub.protocol.words`: words messages share (``with_article``: "an adapter");
- :mod:`~pefthub.protocol.logs`: JSON log lines carrying the request id or job id;
- :mod:`~pefthub.protocol.errors`: :class:`ProtocolError` and its kinds, each with a stable ``code``.

Importing this package never imports the SDK's client (or ``requests``).
"""

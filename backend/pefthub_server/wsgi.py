"""WSGI entry point (waitress in `pefthub-server up`, gunicorn in deploy/)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pefthub_server.settings")
application = get_wsgi_application()

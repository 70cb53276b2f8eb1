from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from pefthub_server import ops
from pefthub_server.core.errors import bad_request, json_404, server_error

urlpatterns = [
    # answered by ops.OperationsMiddleware before the host check; listed here like every route
    *(path(route.lstrip("/"), view, name=route.lstrip("/")) for route, view in ops.ROUTES.items()),
    path("admin/", admin.site.urls),
    path("api/v1/", include("pefthub_server.registry.api.urls")),
    path("api/v1/", include("pefthub_server.jobs.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    re_path(r"^api/", json_404),
    path("hf/", include("pefthub_server.hf.urls")),
    path("", include("pefthub_server.web.urls")),
]

handler400 = bad_request
handler500 = server_error

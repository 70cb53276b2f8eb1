"""Page-number pagination: ``?page=N&page_size=M`` (≤ 200), and its shape in the OpenAPI schema.

A paginated list answers ``{"count", "next", "previous", "results"}``; its view documents
that with ``responses=paginated(ItemSerializer)`` and ``parameters=PAGE_PARAMETERS``, and a
page past the last one is a 404 (``errors(404)``).
"""

from __future__ import annotations

from functools import cache

from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


PAGE_PARAMETERS = [
    OpenApiParameter("page", int, description="Page number, from 1; a page past the last one is a 404."),
    OpenApiParameter("page_size", int, description=(
        f"Items per page (default {Pagination.page_size}, at most {Pagination.max_page_size}; "
        "a value that is not a positive integer means the default).")),
]


@cache
def paginated(item_serializer: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The envelope of one page of ``item_serializer`` objects (named ``Paginated<Item>List`` in the schema)."""
    name = item_serializer.__name__.removesuffix("Serializer")
    return type(f"Paginated{name}ListSerializer", (serializers.Serializer,), {
        "__doc__": f"One page of {name} objects.",
        "count": serializers.IntegerField(min_value=0, help_text="Items in the whole list."),
        "next": serializers.URLField(allow_null=True, help_text="The next page, or null on the last one."),
        "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null on the first one."),
        "results": item_serializer(many=True),
        "__module__": item_serializer.__module__,
    })

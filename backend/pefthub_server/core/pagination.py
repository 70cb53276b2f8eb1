"""Page-number pagination: ``?page=N&page_size=M`` (≤ 200), and its shape in the OpenAPI schema.

A paginated list answers ``{"count", "next", "previous", "results"}``; its view documents
that with ``responses=paginated(ItemSerializer)`` and ``parameters=PAGE_PARAMETERS``, and a
page past the last one is a 404 (``errors(404)``).
"""

from __future__ import annotations

from functools import cache

from django.db.models import Count, OuterRef, QuerySet, Subquery
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


class GroupedRows:
    """A queryset's rows in the order (their group's sort key, then ``order`` within the group), sliced like a list
    (``Paginator``'s object list) without the database sorting every row for one page.

    ``ORDER BY namespace.name, name LIMIT 100`` reads and sorts every matching row: no index holds that order, as
    the group's sort key lives in another table. Here one query counts the rows per group, in the groups' order
    (it is also the page's total count; the groups are ordered after counting, so no row is joined to its group).
    That says which groups a slice covers and where in them it starts, so each group cut by the slice is read
    through the (group, ``order``) index from its offset and stops at the slice's end. The groups a slice holds
    whole (fewer rows together than the slice) are read in one query in the full order. A slice is one query, at
    most three where it cuts into a group at both ends. The order is the database's own, collation included, so a
    page is the one ``qs`` itself gives.

    ``qs`` is ordered by two fields: the sort key of the group, across one foreign key (``namespace__name``), then a
    field unique within a group (``name``). A slice is a list of tuples of ``columns`` (``values_list``).
    """

    def __init__(self, qs: QuerySet, *, columns: tuple[str, ...]) -> None:
        ordering = qs.query.order_by
        names = len(ordering) == 2 and all(isinstance(o, str) and o[:1] not in "-?" and o for o in ordering)
        relation, _, key = ordering[0].partition("__") if names else ("", "", "")
        field = next((f for f in qs.model._meta.get_fields() if f.name == relation), None) \
            if key and "__" not in key and "__" not in ordering[1] else None
        if field is None or not field.many_to_one:
            raise ValueError(f"GroupedRows needs a queryset ordered by its group's key across a foreign key, then a "
                             f"key within the group, not by {ordering!r}")
        self._group, self._order, self._columns = field.attname, ordering[1], columns
        self._group_order = ordering[0]
        # the group's key, looked up once per group after counting
        self._group_key = Subquery(field.related_model._base_manager.filter(pk=OuterRef(field.attname))
                                   .order_by().values(key))
        self._qs = qs.order_by()
        self._counts: list[tuple[object, int]] | None = None

    def counts(self) -> list[tuple[object, int]]:
        """``(group, rows)`` of each group that has rows, in the groups' order."""
        if self._counts is None:
            self._counts = list(self._qs.values(self._group).annotate(rows=Count("pk")).order_by(self._group_key)
                                .values_list(self._group, "rows"))
        return self._counts

    def count(self) -> int:
        return sum(rows for _, rows in self.counts())

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index: slice) -> list:
        if not isinstance(index, slice) or index.step is not None:
            raise TypeError("GroupedRows takes slices [start:stop] only")
        start, stop = index.start or 0, index.stop
        head, whole, tail, first = None, [], None, 0  # head, tail: (group, offset, stop) of a group cut by the slice
        for group, rows in self.counts():
            if stop is not None and first >= stop:
                break
            lo, hi = max(start - first, 0), rows if stop is None else min(stop - first, rows)
            if lo < hi:
                if lo == 0 and hi == rows:
                    whole.append(group)
                elif head is None and not whole:
                    head = (group, lo, hi)
                else:
                    tail = (group, lo, hi)
            first += rows
        rows = self._qs.values_list(*self._columns)
        page = [] if head is None else list(rows.filter(**{self._group: head[0]}).order_by(self._order)[head[1]:head[2]])
        if whole:
            page += rows.filter(**{f"{self._group}__in": whole}).order_by(self._group_order, self._order)
        if tail is not None:
            page += rows.filter(**{self._group: tail[0]}).order_by(self._order)[tail[1]:tail[2]]
        return page

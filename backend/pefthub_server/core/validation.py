"""Request-body validation shared by every API view."""

from __future__ import annotations

from typing import Any


def validated(serializer_class, data: Any) -> dict:
    """The serializer's validated data; a DRF ValidationError (400, field by field) otherwise."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def local_storage() -> None:
    """Override the suite's autouse blob-store fixture: the protocol needs no Django."""


def refused(code: str, fn, *args, **kwargs):
    """The :class:`ProtocolError` ``fn`` raises, after checking its ``code``."""
    from pefthub.protocol.errors import ProtocolError

    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value

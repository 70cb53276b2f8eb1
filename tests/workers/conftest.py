"""Worker tests that talk to a hub use the live server of the end-to-end tests (real HTTP, threaded)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import hub_for  # noqa: F401 - a fixture, shared rather than written twice


@pytest.fixture(scope="module")
def one_thread():
    """Training modules run torch on one thread (exact, comparable numbers; the machine is shared); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

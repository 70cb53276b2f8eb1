from __future__ import annotations

import pytest

from tests.backend.registry.artefacts import build


@pytest.fixture(scope="session")
def art(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Bases, their fingerprints and adapters, built once for the file checks."""
    return build(tmp_path_factory.mktemp("artefacts"))

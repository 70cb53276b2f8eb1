"""The import contracts in .importlinter hold: who may import what, as the architecture says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_protocol_loads_without_the_client(tmp_path):
    """`import pefthub.protocol` (all the server imports) pulls in neither requests nor tqdm."""
    code = ("import sys, pefthub.protocol.refs, pefthub.protocol.specs, pefthub.protocol.safetensors, "
            "pefthub.protocol.peft_compat; print(sorted({'requests', 'tqdm', 'pefthub.client'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr

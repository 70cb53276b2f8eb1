"""What a worker reports it can run, the override knob, and the one rule that matches needs (pefthub.protocol)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from pefthub.protocol.capabilities import direct_queue, job_needs, unmet, waiting_reason
from pefthub.protocol.errors import SpecError
from pefthub_worker import capabilities


@pytest.fixture
def fresh(monkeypatch):
    """detect() measured again under the test's environment."""
    capabilities.detect.cache_clear()
    yield monkeypatch
    capabilities.detect.cache_clear()


def test_detect_measures_this_machine(fresh):
    fresh.delenv("PEFTHUB_WORKER_CAPABILITIES", raising=False)
    fresh.setenv("PEFTHUB_WORKER_QUEUES", "cpu")
    found = capabilities.detect()
    assert found["cuda"] == torch.cuda.is_available() and found["gpu_count"] == torch.cuda.device_count()
    assert len(found["gpu_memory"]) == found["gpu_count"] and found["queues"] == ["cpu"]
    assert found["torch"] == torch.__version__.split("+")[0] and found["ram_bytes"] > 2**30
    assert found["cuda"] or found["bitsandbytes"] is False  # bitsandbytes counts only with CUDA


def test_the_env_overrides_what_is_detected_key_by_key(fresh):
    fresh.setenv("PEFTHUB_WORKER_CAPABILITIES", '{"cuda": true, "bitsandbytes": true, "gpu_count": 1}')
    found = capabilities.detect()
    assert (found["cuda"], found["bitsandbytes"], found["gpu_count"]) == (True, True, 1)
    assert found["ram_bytes"] > 2**30  # measured, not overridden


@pytest.mark.parametrize(("value", "words"), [
    ("{cuda: true}", "is not JSON"),
    ('{"cuda": 1}', "PEFTHUB_WORKER_CAPABILITIES.cuda must be true or false"),
    ('{"vram": 1}', "PEFTHUB_WORKER_CAPABILITIES.vram is unknown"),
    ('{"ram_bytes": -1}', "PEFTHUB_WORKER_CAPABILITIES.ram_bytes must be a whole number"),
])
def test_a_bad_override_names_the_variable_and_key(fresh, value, words):
    fresh.setenv("PEFTHUB_WORKER_CAPABILITIES", value)
    with pytest.raises(SpecError, match=re.escape(words)):
        capabilities.detect()


def test_needs_and_the_rule_that_meets_them():
    qlora = job_needs(type="train", method="qlora")
    assert job_needs(type="train", method="lora") == {} and qlora == {"cuda": True, "bitsandbytes": True}
    assert unmet(qlora, {"cuda": True}) == ["bitsandbytes"] and unmet(qlora, {}) == ["CUDA", "bitsandbytes"]
    assert unmet(qlora, {"cuda": True, "bitsandbytes": True}) == []
    assert waiting_reason(qlora) == "a worker with CUDA and bitsandbytes"
    merge = job_needs(type="merge", largest_shard=3 * 2**30)
    assert merge == {"ram_bytes": 6 * 2**30 + 512 * 2**20}
    assert unmet(merge, {"ram_bytes": 4 * 2**30}) == ["6.5 GiB of RAM"] and unmet(merge, {"ram_bytes": 8 * 2**30}) == []
    assert unmet(merge, {}) == []  # a worker that does not report its RAM is taken to have enough


def test_direct_queue_names_suit_every_broker_and_stay_distinct():
    names = [direct_queue(n) for n in ("gpu@node-1", "gpu-node-1", "vm:4242", "a" * 300)]
    assert all(re.fullmatch(r"worker\.[A-Za-z0-9._-]+", n) and len(n) < 150 for n in names)
    assert len(set(names)) == len(names) and direct_queue("gpu@node-1") == direct_queue("gpu@node-1")


def test_a_worker_with_a_bad_override_does_not_start(tmp_path):
    env = {**os.environ, "PEFTHUB_TOKEN": "phub_unused", "PEFTHUB_WORKER_CAPABILITIES": '{"gpus": 2}'}
    done = subprocess.run([sys.executable, "-m", "pefthub_worker.cli", "-Q", "gpu"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "PEFTHUB_WORKER_CAPABILITIES.gpus is unknown" in done.stderr

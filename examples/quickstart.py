"""The README's worked example: share a LoRA adapter through a running hub.

alice builds a tiny Llama and trains a LoRA adapter on it (all offline), pushes both;
bob, a teammate with a read-only token, pulls the adapter by reference, loads it with
peft and gets exactly the same logits. Run against a hub started by `./dev up`, or:

    pefthub-server up &                      # in one shell
    python -m examples.quickstart            # in another (same PEFTHUB_DATA_DIR)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from examples import tiny


def adduser(*args: str) -> str:
    """A fresh token from `pefthub-server adduser` (creates user/team/membership if missing)."""
    out = subprocess.run(
        [sys.executable, "-m", "pefthub_server.cli", "adduser", *args], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            requests.get(f"{url}/api/v1/", timeout=2).raise_for_status()
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise SystemExit(f"no hub answers at {url}; start one with `pefthub-server up`") from None
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("PEFTHUB_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--workdir", default=None, help="where to build the tiny model (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("PEFTHUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    from pefthub import Hub

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    wait_for(args.url)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pefthub-demo-"))
    alice_token = adduser("alice", "--team", "acme", "--role", "admin")
    bob_token = adduser("bob", "--team", "acme", "--role", "read", "--scope", "read")

    print(f"1. alice builds a tiny Llama and trains a LoRA adapter on it in {work}")
    base_dir = tiny.make_tiny_llama(work / "llama-tiny")
    expected = tiny.train_lora(base_dir, work / "support-bot", steps=10)

    alice = Hub(url=args.url, token=alice_token, cache_dir=work / "cache-alice")
    base = alice.push(base_dir, "acme/llama-tiny", message="random-init tiny Llama")
    print(f"2. alice pushed acme/llama-tiny@{base.number} ({base.digest[:19]}…)")
    adapter = alice.push(
        work / "support-bot", "acme/support-bot", base_model="acme/llama-tiny", aliases=["prod"], message="10 steps"
    )
    print(f"3. alice pushed acme/support-bot@{adapter.number}, alias prod; created={adapter.created}")
    again = alice.push(work / "support-bot", "acme/support-bot")
    print(f"   re-pushing the same folder: created={again.created} (still version {again.number})")

    bob = Hub(url=args.url, token=bob_token, cache_dir=work / "cache-bob")
    base_path = bob.pull("acme/llama-tiny")
    adapter_path = bob.pull("acme/support-bot@prod")
    print(f"4. bob pulled acme/support-bot@prod into {adapter_path}")
    got = tiny.load_adapter_logits(base_path, adapter_path)
    diff = (got - expected).abs().max().item()
    print(f"5. bob's PeftModel.from_pretrained logits vs alice's: max |diff| = {diff:g}")
    if diff != 0.0:
        raise SystemExit("logits differ: the round trip is broken")
    print("\nTry the CLI next:")
    print(f"  export PEFTHUB_URL={args.url} PEFTHUB_TOKEN={alice_token}")
    print("  pefthub ls --kind adapter")
    print("  pefthub info acme/support-bot")
    print("  pefthub pull acme/support-bot@prod")


if __name__ == "__main__":
    main()

"""The README's worked example: train, share and merge a LoRA adapter through a running hub.

alice builds a tiny Llama and a prompt/completion dataset (offline), pushes both, and
asks the hub to train a LoRA adapter on them: a worker claims the job, trains, and
pushes the adapter as a new version. bob, a teammate with a read-only token, pulls the
adapter and gets exactly the logits the hub's copy gives; alice merges it into the base
for zero-overhead inference. It ends by printing the commands to try next, in a new shell.
Run against a hub started by `./dev up`, or:

    pefthub-server up &                      # one shell (it starts one embedded worker)
    python -m examples.quickstart            # another

Tokens are shown by their prefix only; the temp folder it works in is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import requests

from examples import tiny

PROMPT = "the hub"


def adduser(*args: str) -> str:
    """A fresh token from `pefthub-server adduser` (creates user/team/membership if missing)."""
    out = subprocess.run([sys.executable, "-m", "pefthub_server.cli", "adduser", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"pefthub-server adduser {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout.strip()


def shown(token: str) -> str:
    """A token as this example prints it: its prefix, never the secret."""
    return token[:12] + "…"


def next_steps(url: str) -> str:
    """Commands to try next that work in a new shell, from any folder: absolute paths, nothing assumed set."""
    bin_dir = Path(sys.executable).parent  # not resolved: the venv's python, not the one it links to
    activate = bin_dir / "activate"
    lines = [
        f"Next, in a new shell, while the hub runs (its web catalogue: {url}/):",
        f"  source {shlex.quote(str(activate))}" if activate.exists()
        else f'  export PATH={shlex.quote(str(bin_dir))}:"$PATH"',
        f"  pefthub-server adduser you --team acme --role write | pefthub login --url {url}",
        "  pefthub whoami",
        "  pefthub ls --kind adapter",
        "  pefthub pull acme/support-bot@prod",
        "  pefthub train --base-model acme/llama-tiny --dataset acme/support-data --output acme/bot2 "
        "--method dora --set r=4 --set max_steps=20 --wait",
        '  eval "$(pefthub env)"    # and the Hugging Face tools use the hub too:',
        "  hf download acme/support-bot --local-dir support-bot",
    ]
    if data_dir := os.environ.get("PEFTHUB_DATA_DIR"):
        lines.append("`pefthub-server adduser` finds the running hub's data from any folder; if several hubs run, "
                     f"it asks you to set PEFTHUB_DATA_DIR={shlex.quote(data_dir)}")
    return "\n".join(lines)


def quiet_libraries() -> None:
    """Only the example's own lines: no progress bars, no library notes a reader cannot act on."""
    os.environ.setdefault("PEFTHUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes (imported by peft) notes that an optional faster CPU kernel did not load;
    # peft reads an attribute transformers deprecates.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, message="`is_gradient_checkpointing` is deprecated")


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


def generate(model, tokenizer) -> str:
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def logits(model):
    import torch

    with torch.no_grad():
        return model(input_ids=tiny.sample_input()).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("PEFTHUB_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--workdir", default=None, help="where to build the tiny model and keep it (default: a temp "
                                                          "folder, removed at the end)")
    args = parser.parse_args()
    quiet_libraries()
    wait_for(args.url)
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pefthub-demo-")))
        run(args.url, work)
    print()
    print(next_steps(args.url))


def run(url: str, work: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pefthub import Hub

    alice_token = adduser("alice", "--team", "acme", "--role", "admin")
    bob_token = adduser("bob", "--team", "acme", "--role", "read", "--scope", "read")
    print(f"0. `pefthub-server adduser` made alice (acme admin, write token {shown(alice_token)}) "
          f"and bob (acme reader, read token {shown(bob_token)})")

    print(f"1. alice builds a tiny Llama and a prompt/completion dataset in {work}, and pushes both")
    base_dir = tiny.make_tiny_llama(work / "llama-tiny")
    dataset = tiny.make_dataset(work / "train.jsonl", rows=256)
    alice = Hub(url=url, token=alice_token, cache_dir=work / "cache-alice")
    base = alice.push(base_dir, "acme/llama-tiny", message="random-init tiny Llama")
    data = alice.push(dataset, "acme/support-data")
    print(f"   acme/llama-tiny@{base.number}, acme/support-data@{data.number}")

    print("2. alice submits a LoRA training job; a worker claims it, trains and pushes the adapter")
    job = alice.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/support-bot",
                      method="lora", r=8, max_steps=80, learning_rate=1e-2, batch_size=8, max_seq_length=64,
                      aliases=["prod"])
    done = job.wait(timeout=600)
    losses = [e.data["loss"] for e in job.events() if e.type == "metric" and "loss" in e.data]
    print(f"   job {done.id[:12]} {done.status}: loss {losses[0]:.2f} -> {losses[-1]:.2f} in {len(losses)} steps; "
          f"result {done.result.ref} (alias prod)")

    print("3. bob (read-only token) pulls the adapter and loads it with peft")
    bob = Hub(url=url, token=bob_token, cache_dir=work / "cache-bob")
    base_path, adapter_path = bob.pull("acme/llama-tiny"), bob.pull("acme/support-bot@prod")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base_model = AutoModelForCausalLM.from_pretrained(base_path).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter_path).eval()
    print(f"   before: {generate(base_model, tokenizer)!r}")
    print(f"   after:  {generate(tuned, tokenizer)!r}")
    same = alice.load("acme/support-bot@prod").eval()
    print(f"   bob's logits vs alice's hub.load(): max |diff| = {(logits(tuned) - logits(same)).abs().max().item():g}")

    print("4. alice merges the adapter into its base (a `model` version with lineage)")
    merged_job = alice.merge("acme/support-bot@prod", output="acme/support-bot-merged").wait(timeout=600)
    merged = AutoModelForCausalLM.from_pretrained(alice.pull("acme/support-bot-merged")).eval()
    diff = (logits(merged) - logits(tuned)).abs().max().item()
    print(f"   {merged_job.result.ref}: merged logits vs adapter logits max |diff| = {diff:.2g}")
    if diff > 1e-5:
        raise SystemExit("merged model does not match the adapter")


if __name__ == "__main__":
    main()

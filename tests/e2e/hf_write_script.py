"""Run in a fresh process with HF_ENDPOINT/HF_TOKEN (and HF_HUB_DISABLE_XET=1) set: write to the hub
through Hugging Face tools only, and report what happened.

Usage:
  python hf_write_script.py OUT.pt push CAROL_TOKEN READ_TOKEN
      PeftModel.push_to_hub("acme/bot") with the base loaded by id, then PeftModel.from_pretrained by id;
      upload_folder of an adapter (requests counted); a pickle through upload_file; carol and a read-scope
      token pushing into acme; delete_file; create_branch / create_tag and a commit to the branch
  python hf_write_script.py OUT.pt trainer
      Trainer(...) 2 steps on a LoRA model, then trainer.push_to_hub()
  python hf_write_script.py OUT.pt xet
      upload_file as a user who forgot HF_HUB_DISABLE_XET: the exception's text
Writes a dict of facts (and logits) with torch.save.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch


def _error(call) -> dict:
    """What a failing call raised: its class, status, message and X-Error-Code."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        call()
    except HfHubHTTPError as exc:
        return {"type": type(exc).__name__, "status": exc.response.status_code, "text": str(exc),
                "server_message": exc.server_message, "code": exc.response.headers.get("X-Error-Code")}
    except Exception as exc:  # what a user would see, whatever it is
        return {"type": type(exc).__name__, "status": None, "text": str(exc)}
    return {"type": None}


class Counter:
    """Counts the HTTP requests huggingface_hub sends (observed, passed on unchanged)."""

    def __init__(self):
        import httpx2

        self.seen: list[tuple[str, str]] = []
        self._send = httpx2.Client.send
        counter = self

        def send(client, request, **kwargs):
            counter.seen.append((request.method, request.url.path))
            return counter._send(client, request, **kwargs)

        httpx2.Client.send = send

    def take(self) -> list[tuple[str, str]]:
        seen, self.seen = self.seen, []
        return seen


def _lora(seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained("acme/llama-tiny")  # by id: peft records `acme/llama-tiny`
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapter change the logits
            torch.nn.init.normal_(param, std=0.5)
    return model.eval()


def _logits(model):
    from examples import tiny

    with torch.no_grad():
        return model(input_ids=tiny.sample_input()).logits


def push(carol_token: str, read_token: str) -> dict:
    from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete, HfApi
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    api, out = HfApi(), {}
    model = _lora(1)
    out["local"] = _logits(model)
    out["push_commit"] = model.push_to_hub("acme/bot").oid
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("acme/llama-tiny"), "acme/bot").eval()
    out["loaded"] = _logits(loaded)

    # upload_folder of an adapter into a new repository, every request counted
    counter = Counter()
    with tempfile.TemporaryDirectory() as folder:
        _lora(2).save_pretrained(folder)
        api.create_repo("acme/counted")
        out["counted_commit"] = api.upload_folder(folder_path=folder, repo_id="acme/counted").oid
        out["counted_files"] = sorted(p.name for p in Path(folder).iterdir())
    out["upload_folder_requests"] = counter.take()

    pickle = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94."
    out["pickle"] = _error(lambda: api.upload_file(path_or_fileobj=pickle, path_in_repo="extra.bin",
                                                   repo_id="acme/bot"))
    out["pickle_renamed"] = _error(lambda: api.upload_file(path_or_fileobj=pickle + b"\0" * 600,
                                                           path_in_repo="notes.txt", repo_id="acme/bot"))
    carol = HfApi(token=carol_token)
    out["carol_upload"] = _error(lambda: carol.upload_file(path_or_fileobj=b"hi", path_in_repo="notes.txt",
                                                           repo_id="acme/bot"))
    out["carol_create"] = _error(lambda: carol.create_repo("acme/carols"))
    out["read_scope"] = _error(lambda: HfApi(token=read_token).upload_file(
        path_or_fileobj=b"hi", path_in_repo="notes.txt", repo_id="acme/bot"))

    out["with_notes"] = api.create_commit(
        "acme/bot", operations=[CommitOperationAdd("docs/notes.md", b"# notes\n"),
                                CommitOperationAdd("docs/more.md", b"more\n")], commit_message="notes").oid
    out["files_with_notes"] = sorted(api.list_repo_files("acme/bot"))
    out["without_notes"] = api.delete_file("docs/notes.md", "acme/bot").oid
    out["files_without_notes"] = sorted(api.list_repo_files("acme/bot"))
    out["without_docs"] = api.delete_folder("docs", "acme/bot").oid
    out["files_without_docs"] = sorted(api.list_repo_files("acme/bot"))
    copied = api.create_commit("acme/bot", commit_message="copy", operations=[
        CommitOperationCopy("adapter_model.safetensors", "copy/adapter_model.safetensors"),
        CommitOperationCopy("adapter_config.json", "copy/adapter_config.json")])
    out["files_with_copy"] = sorted(api.list_repo_files("acme/bot"))
    out["copy_then_delete"] = [copied.oid, api.delete_folder("copy", "acme/bot").oid]
    out["delete_missing"] = _error(lambda: api.delete_file("nope.md", "acme/bot"))

    api.create_branch("acme/bot", branch="dev")
    api.create_tag("acme/bot", tag="v1", revision="main")
    out["tag_again"] = _error(lambda: api.create_tag("acme/bot", tag="v1"))
    out["dev_commit"] = api.upload_file(path_or_fileobj=b"dev\n", path_in_repo="dev.md", repo_id="acme/bot",
                                        revision="dev").oid
    out["dev_files"] = sorted(api.list_repo_files("acme/bot", revision="dev"))
    out["v1_files"] = sorted(api.list_repo_files("acme/bot", revision="v1"))
    out["tag_commit"] = _error(lambda: api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.md",
                                                       repo_id="acme/bot", revision="v1"))
    out["stale_parent"] = _error(lambda: api.create_commit(
        "acme/bot", operations=[CommitOperationDelete("dev.md")], commit_message="stale",
        parent_commit=out["push_commit"]))
    out["main_sha"] = api.model_info("acme/bot").sha
    out["dev_sha"] = api.model_info("acme/bot", revision="dev").sha
    out["v1_sha"] = api.model_info("acme/bot", revision="v1").sha
    api.create_branch("acme/bot", branch="gone")
    api.delete_branch("acme/bot", branch="gone")
    return out


def trainer() -> dict:
    from huggingface_hub import HfApi
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from examples import tiny

    model = _lora(3)
    tokenizer = AutoTokenizer.from_pretrained("acme/llama-tiny")
    batch = tiny.sample_input(7, 32)
    rows = [{"input_ids": row, "labels": row} for row in batch]
    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(output_dir=out_dir, max_steps=2, per_device_train_batch_size=2, report_to=[],
                                 save_strategy="no", hub_model_id="acme/trained", use_cpu=True, logging_steps=1)
        run = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
        run.train()
        commit = run.push_to_hub().oid
        saved = sorted(p.name for p in Path(out_dir).iterdir() if p.is_file())
    return {"commit": commit, "saved": saved, "files": sorted(HfApi().list_repo_files("acme/trained")),
            "losses": [e["loss"] for e in run.state.log_history if "loss" in e]}


def xet() -> dict:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("acme/xet", exist_ok=True)
    return {"forgot_xet": _error(lambda: api.upload_file(path_or_fileobj=b"{}" * 10, path_in_repo="big.safetensors",
                                                         repo_id="acme/xet"))}


if __name__ == "__main__":
    out_path, mode, *rest = sys.argv[1:]
    result = {"push": push, "trainer": trainer, "xet": xet}[mode](*rest)
    torch.save(result, out_path)

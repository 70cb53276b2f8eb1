"""Run in a fresh process with HF_ENDPOINT/HF_TOKEN set: load everything through Hugging Face tools.

Usage:
  python hf_client_script.py OUT.pt revisions REVISION [REVISION ...]
      acme/x at each revision (metadata, snapshot, PeftModel, AutoPeftModel), acme/merged, its tokenizer
  python hf_client_script.py OUT.pt tools
      what a user types: pipeline("text-generation", model="acme/merged"),
      AutoPeftModelForCausalLM / PeftModel on acme/adapter (no tokenizer files), load_dataset("acme/data"),
      snapshot_download and hf_hub_download
  python hf_client_script.py OUT.pt reads OTHER_TOKEN
      what HfApi reads besides files: list_models / list_datasets (also as OTHER_TOKEN's owner, and page by page
      through huggingface_hub's own paginate), create_branch + list_repo_refs, list_repo_commits, model_info(files_metadata=True),
      whoami, HfFileSystem info and ls, and load_dataset("acme/data") 10 times, each from a cold cache
Writes a dict of facts and logits with torch.save.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from huggingface_hub import HfApi, HfFileSystem, file_exists, hf_hub_download, list_repo_files, snapshot_download
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from examples import tiny


def revisions(revs: list[str]) -> dict:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    out = {}
    x = tiny.sample_input()
    for rev in revs:
        facts = {}
        if not offline:  # metadata calls need the server; the loads below must work offline too
            info = HfApi().model_info("acme/x", revision=rev)
            facts["sha"] = info.sha
            facts["siblings"] = sorted(s.rfilename for s in info.siblings)
            facts["tags"] = info.tags
            facts["library_name"] = info.library_name
            facts["files"] = sorted(list_repo_files("acme/x", revision=rev))
            facts["exists"] = [file_exists("acme/x", "adapter_config.json", revision=rev),
                               file_exists("acme/x", "no_such_file.json", revision=rev)]
        facts["snapshot"] = sorted(os.listdir(snapshot_download("acme/x", revision=rev)))
        facts["config"] = Path(hf_hub_download("acme/x", "adapter_config.json", revision=rev)).read_text()
        with torch.no_grad():
            base = AutoModelForCausalLM.from_pretrained("acme/llama-tiny")
            facts["peft"] = PeftModel.from_pretrained(base, "acme/x", revision=rev).eval()(input_ids=x).logits
            facts["auto_peft"] = AutoPeftModelForCausalLM.from_pretrained("acme/x", revision=rev).eval()(input_ids=x).logits
        out[rev] = facts
    with torch.no_grad():
        out["merged"] = AutoModelForCausalLM.from_pretrained("acme/merged").eval()(input_ids=x).logits
    out["tokenizer"] = AutoTokenizer.from_pretrained("acme/merged")("the hub stores small weights").input_ids
    return out


def tools() -> dict:
    from datasets import load_dataset
    from transformers import pipeline

    x = tiny.sample_input()
    out = {}
    generator = pipeline("text-generation", model="acme/merged")
    out["generated"] = generator("the hub", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    with torch.no_grad():
        out["pipeline"] = generator.model.eval()(input_ids=x).logits
        out["auto_peft"] = AutoPeftModelForCausalLM.from_pretrained("acme/adapter").eval()(input_ids=x).logits
        base = AutoModelForCausalLM.from_pretrained("acme/llama-tiny")
        out["peft"] = PeftModel.from_pretrained(base, "acme/adapter").eval()(input_ids=x).logits
    out["rows"] = list(load_dataset("acme/data", split="train"))
    out["snapshot"] = sorted(os.listdir(snapshot_download("acme/adapter")))
    out["config"] = Path(hf_hub_download("acme/adapter", "adapter_config.json")).read_text()
    return out


def reads(other_token: str) -> dict:
    from datasets import config, load_dataset
    from huggingface_hub import constants
    from huggingface_hub.utils import paginate

    api, other = HfApi(), HfApi(token=other_token)
    out = {
        "models": [m.id for m in api.list_models()],
        "search": [m.id for m in api.list_models(search="BO", author="acme")],
        "adapters_of_base": [m.id for m in api.list_models(filter="base_model:adapter:acme/llama-tiny")],
        "newest_two": [m.id for m in api.list_models(sort="created_at", limit=2)],
        "datasets": [d.id for d in api.list_datasets()],
        "other_models": [m.id for m in other.list_models()],
        "other_adapters_of_base": [m.id for m in other.list_models(filter="base_model:adapter:acme/llama-tiny")],
        "other_datasets": [d.id for d in other.list_datasets()],
        # one repository per page: huggingface_hub follows each `Link: <...>; rel="next"`
        "paged": [m["id"] for m in paginate(f"{constants.ENDPOINT}/api/models", params={"limit": 1},
                                            headers=api._build_hf_headers())],
    }
    api.create_branch("acme/bot", branch="dev", revision="prod")  # an alias listed as a branch
    refs = api.list_repo_refs("acme/bot")
    out["refs"] = {"branches": [(r.name, r.ref, r.target_commit) for r in refs.branches],
                   "tags": [(r.name, r.ref, r.target_commit) for r in refs.tags]}
    out["commits"] = [(c.commit_id, c.title, c.message, c.authors) for c in api.list_repo_commits("acme/bot")]
    out["commits_from_prod"] = [c.commit_id for c in api.list_repo_commits("acme/bot", revision="prod")]
    info = api.model_info("acme/bot", files_metadata=True)
    out["files"] = {s.rfilename: (s.size, s.blob_id, s.lfs.sha256 if s.lfs else None) for s in info.siblings}
    out["card"] = Path(hf_hub_download("acme/bot", "README.md")).read_text()
    out["card_data"] = info.card_data.to_dict()
    out["whoami"] = api.whoami()
    fs = HfFileSystem()  # info() asks paths-info, ls() the tree
    out["fs"] = (fs.info("acme/bot/adapter_config.json", revision="prod")["size"], sorted(fs.ls("acme/bot", detail=False)))
    out["dataset_card"] = Path(hf_hub_download("acme/data", "README.md", repo_type="dataset")).read_text()
    out["loads"] = []
    for _ in range(10):  # each from a cold cache: every probe datasets sends, answered again
        for cache in (constants.HF_HUB_CACHE, config.HF_DATASETS_CACHE):
            shutil.rmtree(cache, ignore_errors=True)
        out["loads"].append(list(load_dataset("acme/data", split="train")))
    return out


if __name__ == "__main__":
    out_path, mode, *args = sys.argv[1:]
    torch.save({"revisions": lambda: revisions(args), "tools": tools, "reads": lambda: reads(*args)}[mode](), out_path)

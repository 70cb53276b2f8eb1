"""Run in a fresh process with HF_ENDPOINT/HF_TOKEN set: load everything through Hugging Face tools.

Usage:
  python hf_client_script.py OUT.pt revisions REVISION [REVISION ...]
      acme/x at each revision (metadata, snapshot, PeftModel, AutoPeftModel), acme/merged, its tokenizer
  python hf_client_script.py OUT.pt tools
      what a user types: pipeline("text-generation", model="acme/merged"),
      AutoPeftModelForCausalLM / PeftModel on acme/adapter (no tokenizer files), load_dataset("acme/data"),
      snapshot_download and hf_hub_download
Writes a dict of facts and logits with torch.save.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from huggingface_hub import HfApi, file_exists, hf_hub_download, list_repo_files, snapshot_download
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


if __name__ == "__main__":
    out_path, mode, *args = sys.argv[1:]
    torch.save({"revisions": lambda: revisions(args), "tools": tools}[mode](), out_path)

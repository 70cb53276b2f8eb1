"""Run in a fresh process with HF_ENDPOINT/HF_TOKEN set: load everything through Hugging Face tools.

Usage: python hf_client_script.py OUT.pt REVISION [REVISION ...]
Writes {revision: {...facts, logits...}} with torch.save.
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

offline = os.environ.get("HF_HUB_OFFLINE") == "1"
out = {}
x = tiny.sample_input()
for rev in sys.argv[2:]:
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
torch.save(out, sys.argv[1])

from __future__ import annotations

import torch

from pefthub.cli import main
from tests.e2e.test_jobs_e2e import FAST, inputs, start_worker  # noqa: F401


def test_cli_and_load_against_the_real_hub(inputs, start_worker, monkeypatch, capsys, tmp_path):
    start_worker()
    hub = inputs
    monkeypatch.setenv("PEFTHUB_URL", hub.url)
    monkeypatch.setenv("PEFTHUB_TOKEN", hub.token)
    monkeypatch.setenv("PEFTHUB_CACHE", str(tmp_path / "c"))
    sets = [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]
    code = main(["train", "--base-model", "acme/llama-tiny", "--dataset", "acme/support-data", "--output", "acme/bot",
                 *sets, "--wait"])
    out, err = capsys.readouterr()
    print("TRAIN OUT", out, "ERR", err[-2000:])
    assert code == 0
    job_id, ref = out.split()
    code = main(["jobs", "logs", job_id])
    out, _ = capsys.readouterr()
    print("LOGS\n", out)
    assert code == 0 and "step 30/30" in out
    main(["jobs", "show", job_id]); main(["jobs", "ls"])
    print(capsys.readouterr().out)
    model = hub.load(ref)
    print(type(model))
    code = main(["merge", ref, "--output", "acme/m", "--wait"])
    out, err = capsys.readouterr()
    print("MERGE", out, err[-500:])
    assert code == 0
    m = hub.load(out.split()[-1], torch_dtype=torch.float32)
    print(type(m))

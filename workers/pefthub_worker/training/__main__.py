"""Run the training recipe on local folders, without a hub: for debugging and benchmarks.

    python -m pefthub_worker.training --base ./llama-tiny --data train.jsonl --out ./adapter \\
        --method lora --set r=8 --set max_steps=20 --set target_modules='["q_proj","v_proj"]'

Events and the result are printed as JSON lines on stdout (``{"type": "metric", "data": {...}}``);
Ctrl-C stops at the next optimizer step and writes nothing. Exit status: 0 done, 2 bad
spec or data, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from pefthub.protocol.errors import SpecError
from pefthub.protocol.peft import METHODS
from pefthub.protocol.specs import TrainHyperparameters, parse_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pefthub_worker.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="folder of the base model (config.json, weights, tokenizer)")
    parser.add_argument("--data", required=True, type=Path, help="the JSONL dataset file")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the adapter to (must not hold files)")
    parser.add_argument("--method", default="lora", choices=METHODS)
    parser.add_argument("--continue-from", type=Path, metavar="DIR",
                        help="a saved adapter to start from (--set must build its shape: r, lora_alpha, targets)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter (repeatable); see pefthub.protocol.specs.TrainHyperparameters")
    args = parser.parse_args(argv)

    from . import Callbacks, Cancelled, DatasetError, QLoRAUnavailable, train

    def emit(type: str, data: dict) -> None:
        print(json.dumps({"type": type, "data": data}), flush=True)

    stop = {"requested": False}

    def on_interrupt(signum: int, frame: object) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        emit("log", {"message": "stopping at the next step (Ctrl-C again to abort now)", "level": "warning"})

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        hp = TrainHyperparameters.from_dict(parse_overrides(args.sets), method=args.method)
        result = train(method=args.method, hyperparameters=hp, base_dir=args.base, dataset_path=args.data,
                       output_dir=args.out, callbacks=Callbacks(on_event=emit, should_stop=lambda: stop["requested"]),
                       continue_from=args.continue_from)
    except (SpecError, DatasetError, QLoRAUnavailable, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    emit("result", {"output_dir": str(result.output_dir), "peft_type": result.peft_type,
                    "quantization": result.quantization, "metrics": result.metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())

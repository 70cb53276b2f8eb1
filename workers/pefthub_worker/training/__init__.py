"""Train adapters: the recipe behind ``pefthub.train`` jobs, runnable on its own.

    from pefthub_worker.training import train
    result = train(method="lora", hyperparameters=TrainHyperparameters(r=8), base_dir=base,
                   dataset_path=Path("train.jsonl"), output_dir=Path("out"))

torch, transformers and peft are imported when a function runs, not at import time.
"""

from __future__ import annotations

from .checkpoint import CheckpointError
from .config import QLoRAUnavailable
from .data import DatasetError
from .recipe import Callbacks, Cancelled, TrainResult, train

__all__ = ["Callbacks", "Cancelled", "CheckpointError", "DatasetError", "QLoRAUnavailable", "TrainResult", "train"]

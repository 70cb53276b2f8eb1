"""Merge adapters into their base: the recipe behind ``pefthub.merge`` jobs, usable on its own.

    from pefthub_worker.merging import merge
    result = merge(base_dir=Path("llama"), adapters=[(Path("adapter"), 1.0)], output_dir=Path("merged"))

:mod:`.recipe` reads top to bottom; :mod:`.plan` reads the adapters and decides each base
tensor's edits, :mod:`.shards` reads the base's headers and writes its shards, :mod:`.ops`
holds the tensor math.
"""

from __future__ import annotations

from .ops import combine, tensor_seed
from .plan import MergeError
from .recipe import MergeResult, merge

__all__ = ["MergeError", "MergeResult", "combine", "merge", "tensor_seed"]

"""peft's vocabulary as the hub uses it: peft types, training methods, what merges, which modules a target names."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from .limits import MAX_TARGET_REGEX_LENGTH

#: ``peft_type`` values of peft 0.21's ``PeftType``, as written in adapter_config.json
PEFT_TYPES = frozenset({
    "PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA", "ADALORA", "ADAMSS", "BOFT",
    "ADAPTION_PROMPT", "IA3", "BEFT", "LILY", "LOHA", "LOKR", "OFT", "POLY", "LN_TUNING", "VERA", "FROD", "PVERA",
    "FOURIERFT", "GLORA", "XLORA", "HRA", "VBLORA", "UNILORA", "CPT", "MISS", "RANDLORA", "ROAD",
    "TRAINABLE_TOKENS", "HIRA", "SHIRA", "C3A", "WAVEFT", "OSF", "DELORA", "GRALORA", "CARTRIDGE", "TINYLORA",
    "PSOFT", "PEANUT", "SHADOW", "SUPERTUNING", "DEFT",
})
#: types whose config needs a positive rank ``r``
RANKED_TYPES = frozenset({"LORA", "ADALORA", "LOHA", "LOKR", "VERA", "RANDLORA"})
#: prompt learning: virtual tokens (``num_virtual_tokens``), no weight changes
PROMPT_LEARNING_TYPES = frozenset({"PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "CPT"})
#: types whose adapters peft 0.21's ``merge_and_unload`` folds into the base (DoRA is LORA with use_dora);
#: prompt learning and adaption prompts have no merge
PEFT_MERGEABLE_TYPES = frozenset({
    "LORA", "ADALORA", "IA3", "LOHA", "LOKR", "LN_TUNING", "BOFT", "OFT", "VERA", "FOURIERFT",
    "HRA", "VBLORA", "RANDLORA", "MISS", "C3A", "PEANUT", "TRAINABLE_TOKENS",
})
#: types a hub merge job merges: LoRA (DoRA included) and IA3
MERGE_JOB_TYPES = frozenset({"LORA", "IA3"})

#: training methods of a train job, and the peft type each produces
METHOD_PEFT_TYPES = {
    "lora": "LORA", "qlora": "LORA", "dora": "LORA", "ia3": "IA3",
    "prefix_tuning": "PREFIX_TUNING", "prompt_tuning": "PROMPT_TUNING",
}
METHODS = tuple(METHOD_PEFT_TYPES)
#: methods whose adapter is a LoRA (rank ``r``, ``lora_alpha``, ``lora_dropout``)
LORA_METHODS = frozenset({"lora", "qlora", "dora"})
#: methods that learn virtual tokens, not weights of target modules
VIRTUAL_TOKEN_METHODS = frozenset({"prefix_tuning", "prompt_tuning"})

ALL_LINEAR = "all-linear"


def target_regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a ``target_modules`` regex (too long, or not one), or None when it can."""
    if len(pattern) > MAX_TARGET_REGEX_LENGTH:
        return f"is {len(pattern)} characters long; the limit is {MAX_TARGET_REGEX_LENGTH}"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    return None


def unmatched_target(targets: str | Iterable[str] | None, modules: Iterable[str], *,
                     fullmatch: Callable[[str, str], object] = re.fullmatch) -> str | None:
    """The first of ``targets`` that names none of ``modules`` (peft's matching), or None when all match.

    A list entry matches a module whose name is it or ends with ``.`` + it; a string is a
    regex that must fully match some module's full name (``fullmatch(pattern, name)``, which
    a caller may bound in time; whatever it raises passes through); ``all-linear`` and None
    match. A list costs one set lookup per dotted tail of each module name.
    """
    if targets is None or targets == ALL_LINEAR:
        return None
    if isinstance(targets, str):
        return None if any(fullmatch(targets, name) for name in modules) else targets
    wanted = dict.fromkeys(targets)
    longest = max(map(len, wanted), default=0)
    found = set()
    for name in modules:
        if name in wanted:
            found.add(name)
        dot = name.rfind(".")
        while dot >= 0 and len(name) - dot - 1 <= longest:
            if (tail := name[dot + 1:]) in wanted:
                found.add(tail)
            dot = name.rfind(".", 0, dot)
    return next((t for t in wanted if t not in found), None)

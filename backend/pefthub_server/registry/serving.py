"""What a serving stack (vLLM, TGI, peft) needs to know about an adapter version before loading it."""

from __future__ import annotations

from pefthub.protocol.peft import PEFT_MERGEABLE_TYPES


def serving_facts(adapter: dict | None) -> dict | None:
    """Rank, targets, ``modules_to_save``, DoRA, whether peft merges it and whether multi-LoRA servers take it."""
    if not adapter:
        return None
    peft_type = adapter.get("peft_type")
    return {
        "peft_type": peft_type,
        "rank": adapter.get("r"),
        "lora_alpha": adapter.get("lora_alpha"),
        "target_modules": adapter.get("target_modules"),
        "modules_to_save": adapter.get("modules_to_save"),
        "use_dora": bool(adapter.get("use_dora")),
        "mergeable": peft_type in PEFT_MERGEABLE_TYPES,
        # vLLM and TGI serve plain LoRA adapters without modules_to_save.
        "multi_lora_servable": peft_type == "LORA" and not adapter.get("use_dora") and not adapter.get("modules_to_save"),
    }

"""``Hub.load``: a hub reference straight to a ``transformers`` model.

torch, transformers and peft are imported here, lazily: the SDK itself needs none of
them (``pip install 'pefthub[load]'`` brings them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ValidationError

if TYPE_CHECKING:
    from .models import Version

__all__ = ["LoadMixin"]


def _ml() -> tuple[Any, Any]:
    try:
        import peft
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"Hub.load needs torch, transformers and peft ({exc}): pip install 'pefthub[load]'"
        ) from exc
    return transformers, peft


def _dtype_keyword(transformers: Any) -> str:
    """transformers 4.56 renamed ``torch_dtype`` to ``dtype`` (the old name warns in 5.x)."""
    try:
        major, minor = (int(p) for p in str(transformers.__version__).split(".")[:2])
    except ValueError:
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _base_ref(version: Version) -> str:
    base = version.base_model or {}
    if not base.get("repo"):
        raise ValidationError(f"{version.ref} is an adapter with no recorded base model: cannot load it")
    # The digest pins exactly the base the adapter was validated against (and lets a
    # cached base load without a request); the number is the fallback.
    revision = base.get("digest") or base.get("number")
    if revision is None:
        raise ValidationError(f"{version.ref}: its base model record names no version")
    return f"{base['repo']}@{revision}"


class LoadMixin:
    """``load``: the model half of :class:`~pefthub.Hub`."""

    if TYPE_CHECKING:
        def version(self, ref: str) -> Version: ...

        def pull(self, ref: str, *, local_dir: str | os.PathLike[str] | None = None) -> Path: ...

    def load(self, ref: str, *, torch_dtype: Any = None, device_map: Any = None) -> Any:
        """Pull ``ref`` and load it with transformers (causal LM).

        An adapter comes back as a ``PeftModel`` on its base (the base version the hub
        recorded, pulled too); a model repository as an ``AutoModelForCausalLM``.
        ``torch_dtype`` and ``device_map`` go to ``from_pretrained``.
        """
        transformers, peft = _ml()
        version = self.version(ref)
        paths = {f.path for f in version.files or ()}
        kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            kwargs[_dtype_keyword(transformers)] = torch_dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
        pinned = f"{version.repo}@{version.digest}"
        auto = transformers.AutoModelForCausalLM
        if "adapter_config.json" in paths:
            base_ref = _base_ref(version)
            adapter_path = self.pull(pinned)
            model = auto.from_pretrained(str(self.pull(base_ref)), **kwargs)
            return peft.PeftModel.from_pretrained(model, str(adapter_path))
        if "config.json" in paths:
            return auto.from_pretrained(str(self.pull(pinned)), **kwargs)
        raise ValidationError(
            f"{version.ref} holds neither adapter_config.json nor config.json: only adapters and models load"
        )

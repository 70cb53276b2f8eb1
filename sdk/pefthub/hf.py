"""Point Hugging Face tools at the hub, and fill the standard Hugging Face cache.

The hub serves a Hugging Face-compatible API under ``/hf``: with
``HF_ENDPOINT={hub}/hf`` and ``HF_TOKEN=<hub token>``, ``huggingface_hub``,
transformers, peft, vLLM and TGI load ``namespace/name`` from it unchanged. A hub
revision maps to a Hugging Face one: ``latest`` is ``main``, an alias or a version
number is itself, a digest ``sha256:<hex>`` is the commit ``<first 40 hex>``.

``huggingface_hub`` is imported lazily (``pip install 'pefthub[hf]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import constants as c
from .errors import HubConnectionError, HubError, NotFound, error_class_for
from .protocol.refs import Ref, hf_revision
from .refs import parse_ref

__all__ = ["HFMixin", "hf_endpoint", "hf_revision"]

#: huggingface_hub uploads through Xet whenever hf_xet is installed (a dependency of huggingface_hub 2);
#: the hub speaks the LFS protocol, so every environment that points tools at it turns Xet off
_NOT_FOUND_CODES = frozenset({"RepoNotFound", "RevisionNotFound", "EntryNotFound"})


def hf_endpoint(url: str) -> str:
    return f"{url.rstrip('/')}{c.HF_PREFIX}"


def _huggingface_hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.utils  # the error classes; the package loads it lazily
    except ImportError as exc:
        raise ImportError(
            f"filling the Hugging Face cache needs huggingface_hub ({exc}): pip install 'pefthub[hf]'"
        ) from exc
    return huggingface_hub


def _silent_tqdm() -> type:
    from tqdm.auto import tqdm

    class Silent(tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


class HFMixin:
    """``hf_env`` and ``pull_to_hf_cache``: the Hugging Face half of :class:`~pefthub.Hub`."""

    if TYPE_CHECKING:
        url: str
        token: str | None
        progress: bool

    def hf_env(self) -> dict[str, str]:
        """The environment that points Hugging Face tools at this hub.

        ``HF_ENDPOINT`` and ``HF_HUB_DISABLE_XET=1`` (uploads then use the LFS protocol the hub
        speaks) always; ``HF_TOKEN`` when the client has a token, else
        ``HF_HUB_DISABLE_IMPLICIT_TOKEN=1`` so no huggingface.co token leaks to the hub.
        Use it for a child process: ``subprocess.run(cmd, env={**os.environ, **hub.hf_env()})``
        (huggingface_hub reads ``HF_ENDPOINT`` once, when it is imported).
        """
        env = {c.ENV_HF_ENDPOINT: hf_endpoint(self.url), c.ENV_HF_DISABLE_XET: "1"}
        if self.token:
            env[c.ENV_HF_TOKEN] = self.token
        else:
            env[c.ENV_HF_NO_IMPLICIT_TOKEN] = "1"
        return env

    def pull_to_hf_cache(self, ref: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
        """Download ``ref`` into the standard Hugging Face cache; return its snapshot folder.

        ``cache_dir`` defaults to huggingface_hub's own (``$HF_HUB_CACHE``, else
        ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``). Afterwards tools load
        ``namespace/name`` at that revision with ``HF_HUB_OFFLINE=1``: the cache holds
        ``models--{ns}--{name}/blobs``, ``snapshots/<commit>`` and ``refs/<revision>``.
        """
        r = parse_ref(ref)
        hf = _huggingface_hub()
        kwargs: dict[str, Any] = {}
        if not self.progress:
            kwargs["tqdm_class"] = _silent_tqdm()
        endpoint = hf_endpoint(self.url)
        # huggingface_hub reads bodies in 10 MiB chunks, which costs ~20k page faults per
        # 64 MiB here; 1 MiB reads were 22% faster (bench/hf.py). Read on every call.
        constants = getattr(hf, "constants", None)
        chunk_size = getattr(constants, "DOWNLOAD_CHUNK_SIZE", None)
        if chunk_size is not None:
            constants.DOWNLOAD_CHUNK_SIZE = 1 << 20
        try:
            folder = hf.snapshot_download(
                r.repo_id,
                revision=hf_revision(r),
                endpoint=endpoint,
                # False, not None: never fall back to a huggingface.co token
                token=self.token or False,
                cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                **kwargs,
            )
        except hf.utils.HfHubHTTPError as exc:
            raise _typed(exc, r) from exc
        except hf.utils.LocalEntryNotFoundError as exc:
            raise HubConnectionError(
                f"{r}: {endpoint} could not be reached (or HF_HUB_OFFLINE is set) and the Hugging Face "
                f"cache does not hold it: {exc}"
            ) from exc
        finally:
            if chunk_size is not None:
                constants.DOWNLOAD_CHUNK_SIZE = chunk_size
        return Path(folder)


def _typed(exc: Any, ref: Ref) -> HubError:
    """huggingface_hub's HTTP error as the SDK's typed one, with the hub's ``X-Error-Code``."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    code = response.headers.get("X-Error-Code") if response is not None else None
    # private repos are RepoNotFound to outsiders, whatever the status
    cls = NotFound if code in _NOT_FOUND_CODES else error_class_for(status) if status else HubError
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return cls(f"{ref}: {message}", status=status, code=code, request_id=getattr(exc, "request_id", None))

"""Uploads through the Hugging Face protocol: ``preupload`` (which files go inline, which through LFS)
and the LFS batch API (where the bytes go), for ``hf.write``'s commit.

- preupload: small text and JSON files go inline in the commit, safetensors and anything
  larger through LFS, so commit bodies stay far below PEFTHUB_MAX_REQUEST_BODY; pickles are
  refused by name and by their first bytes, except ``training_args.bin`` (Trainer saves it
  with every model, nothing loads it), which huggingface_hub is told to leave out.
- LFS batch: a blob the caller possesses needs no upload (``blobs.blobs_possessed``:
  knowing a sha256 is not access); any other gets the store's target bound to the caller
  (the signed local PUT, or a presigned S3 PUT to its own staging key, so bytes go straight
  to S3), and on S3 a ``verify`` step that hashes what arrived.
"""

from __future__ import annotations

import base64
import binascii

from django.conf import settings
from django.http import JsonResponse

from pefthub.protocol.limits import MAX_FILES
from pefthub.protocol.manifest import check_path
from pefthub.protocol.refs import is_sha256
from pefthub_server.core.http import base_url
from pefthub_server.hf.views import HfError
from pefthub_server.hf.write import head_of, json_body, writable, write_view
from pefthub_server.registry import acceptance
from pefthub_server.registry.blobs import blobs_possessed, upload_accept
from pefthub_server.registry.models import VersionFile
from pefthub_server.registry.storage import BlobStore, get_blob_store

#: the largest file preupload lets huggingface_hub send inline in the commit, and the most inline
#: bytes one preupload request lets through: commits stay far below PEFTHUB_MAX_REQUEST_BODY
REGULAR_MAX = 256 * 1024
REGULAR_BUDGET = 4 * 1024 * 1024
#: files Trainer saves that nothing loads: preupload tells huggingface_hub to leave them out
IGNORED = frozenset({"training_args.bin"})


def _sample(value: object, path: str) -> bytes:
    if not isinstance(value, str) or len(value) > 1024:
        raise HfError(400, None, f"`{path}`: `sample` must be the base64 of the file's first 512 bytes.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HfError(400, None, f"`{path}`: `sample` is not valid base64.") from None


def _size(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise HfError(400, None, f"{what}: `size` must be a non-negative integer.")
    if value > settings.PEFTHUB_MAX_FILE_SIZE:
        raise HfError(413, None, f"{what} is {value} bytes; the limit is {settings.PEFTHUB_MAX_FILE_SIZE} "
                      "(PEFTHUB_MAX_FILE_SIZE).")
    return value


@write_view("POST")
def preupload(request, repo_type, ns, name, rev):
    """Which files go inline (`regular`) and which through LFS; pickles refused, ``training_args.bin`` ignored."""
    repo = writable(request, repo_type, ns, name)
    head, _ = head_of(repo, rev)
    files = json_body(request).get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise HfError(400, None, f"`files` must be a list of at most {MAX_FILES} {{path, sample, size}}.")
    current = dict(VersionFile.objects.filter(version=head).values_list("path", "blob_id")) if head else {}
    answer, inline = [], 0
    for item in files:
        if not isinstance(item, dict):
            raise HfError(400, None, "Each of `files` must be an object {path, sample, size}.")
        path = check_path(item.get("path"))
        size = _size(item.get("size"), f"`{path}`")
        if path.rsplit("/", 1)[-1] in IGNORED:
            answer.append({"path": path, "uploadMode": "regular", "shouldIgnore": True})
            continue
        category = acceptance.check_file_type(path)
        acceptance.check_magic(path, _sample(item.get("sample", ""), path)[:16])
        regular = category != "safetensors" and size <= REGULAR_MAX and inline + size <= REGULAR_BUDGET
        inline += size if regular else 0
        entry = {"path": path, "uploadMode": "regular" if regular else "lfs", "shouldIgnore": False}
        if not regular and path in current:
            entry["oid"] = current[path]  # huggingface_hub then leaves an unchanged file out of the commit
        answer.append(entry)
    return JsonResponse({"files": answer})


def _upload_href(store: BlobStore, sha256: str, size: int, *, user_id: int, base: str) -> str:
    """Where user ``user_id`` PUTs the bytes, as a URL that needs no header: huggingface_hub's basic transfer sends none.

    Local: the store's signed upload URL, verified as it streams. S3: a plain presigned PUT to
    the user's staging key (not the checksum-signed one ``hub.push`` gets); ``verify``
    (``S3BlobStore.accept_upload``) hashes what arrived before it becomes the blob.
    """
    return store.upload_target(sha256, size, user_id=user_id, base_url=base, headerless=True)["url"]


def _oid(obj: object) -> tuple[str, int]:
    if not isinstance(obj, dict) or not is_sha256(obj.get("oid")):
        raise HfError(400, None, "Each object needs `oid`, a sha256 (64 lowercase hex digits), and `size`.")
    return obj["oid"], _size(obj.get("size"), f"Object {obj['oid']}")


@write_view("POST")
def lfs(request, repo_type, ns, name, action):
    """The LFS batch API (``batch``) and the check after an upload to S3 (``verify``)."""
    writable(request, repo_type, ns, name)
    body = json_body(request)
    store, user = get_blob_store(), request.user
    if action == "verify":
        oid, size = _oid(body)
        if blobs_possessed(user=user, sha256s={oid}).get(oid) == size:
            return JsonResponse({"oid": oid, "size": size})
        if not upload_accept(user_id=user.pk, sha256=oid, size=size):  # size or digest mismatch: a 400 naming it
            raise HfError(404, None, f"No upload of blob {oid} by you has arrived; PUT it to the href the LFS batch "
                          "answered, then verify again.")
        return JsonResponse({"oid": oid, "size": size})
    if body.get("operation") != "upload":
        raise HfError(400, None, "The LFS batch API here takes uploads; downloads go through /resolve.")
    if "basic" not in (body.get("transfers") or ["basic"]):
        raise HfError(400, None, "PEFT Hub offers the `basic` LFS transfer only.")
    objects = body.get("objects")
    if not isinstance(objects, list) or len(objects) > MAX_FILES:
        raise HfError(400, None, f"`objects` must be a list of at most {MAX_FILES} {{oid, size}}.")
    wanted = dict(_oid(obj) for obj in objects)
    possessed = blobs_possessed(user=user, sha256s=wanted)
    base, verify = base_url(request), request.build_absolute_uri(request.path[: -len("batch")] + "verify")
    answer = []
    for oid, size in wanted.items():
        item: dict = {"oid": oid, "size": size, "authenticated": True}
        if possessed.get(oid) != size:
            item["actions"] = {"upload": {"href": _upload_href(store, oid, size, user_id=user.pk, base=base),
                                          "expires_in": store.upload_expires}}
            if not store.serves_bytes:  # a local PUT is verified as it streams; an S3 one is checked here
                item["actions"]["verify"] = {"href": verify}
        answer.append(item)
    return JsonResponse({"transfer": "basic", "objects": answer, "hash_algo": "sha256"},
                        content_type="application/vnd.git-lfs+json")

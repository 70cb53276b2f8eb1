"""Stand-ins for the SDK tests: a stdlib HTTP server in a thread, and a small hub.

``FakeHub`` follows docs/api.md closely enough to drive push, pull and the CLI end
to end, and plays the signed blob URLs (the S3 role). The real server is exercised
by the integration suites; these tests pin the client's side of the contract.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "tok-alice"


# -- a tiny HTTP server ---------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Reply:
    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: send only this many body bytes (after a full Content-Length), then hang up
    cut_after: int | None = None

    def payload(self) -> bytes:
        if isinstance(self.body, (bytes, bytearray)):
            return bytes(self.body)
        self.headers.setdefault("Content-Type", "application/json")
        return json.dumps(self.body).encode()


Handler = Callable[[Seen, "re.Match[str]"], Reply]


class FakeServer:
    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body in one write: no Nagle/delayed-ACK stalls

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                else:
                    body = self.rfile.read(int(headers.get("content-length") or 0))
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                seen = Seen(self.command, parts.path, query, headers, body)
                with server._lock:
                    server.seen.append(seen)
                reply = server.dispatch(seen)
                payload = reply.payload()
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                if reply.cut_after is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if reply.cut_after is not None:
                    self.wfile.write(payload[: reply.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def _read_chunked(self) -> bytes:
                out = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.insert(0, (method, re.compile(pattern), handler))

    def dispatch(self, seen: Seen) -> Reply:
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(seen.path)
            if match and method in (seen.method, "*"):
                return handler(seen, match)
        return error(404, "not_found", f"no route for {seen.method} {seen.path}")

    def requests(self, method: str | None = None, prefix: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method) and s.path.startswith(prefix)]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def error(status: int, code: str, message: str, **headers: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message, "detail": None}}, dict(headers))


# -- a stand-in hub ----------------------------------------------------------------
def canonical_digest(files: list[dict[str, Any]]) -> str:
    entries = sorted(({"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in files),
                     key=lambda e: e["path"])
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class FakeHub:
    """Repos, versions, aliases and blobs in memory, behind the v1 URL layout."""

    API = "/api/v1"

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.url = server.url
        self.repos: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.aliases: dict[str, dict[str, int]] = {}
        self.blobs: dict[str, bytes] = {}
        #: sha256 -> bytes to serve instead of the real ones
        self.corrupt: dict[str, bytes] = {}
        self.honour_range = True
        #: sha256 -> how many bytes the next download of it sends before hanging up
        self.cut_next: dict[str, int] = {}
        repo = r"/api/v1/repos/(?P<ns>[^/]+)/(?P<name>[^/]+)"
        routes: list[tuple[str, str, Handler]] = [
            ("GET", r"/api/v1/whoami", self.whoami),
            ("GET", r"/api/v1/repos", self.list_repos),
            ("POST", r"/api/v1/repos", self.create_repo),
            ("GET", repo, self.get_repo),
            ("PATCH", repo, self.patch_repo),
            ("DELETE", repo, self.delete_repo),
            ("POST", repo + "/uploads", self.uploads),
            ("POST", repo + "/versions", self.commit),
            ("GET", repo + "/versions", self.list_versions),
            ("GET", repo + "/versions/(?P<rev>[^/]+)", self.get_version),
            ("GET", repo + "/aliases", self.list_aliases),
            ("PUT", repo + "/aliases/(?P<alias>[^/]+)", self.put_alias),
            ("DELETE", repo + "/aliases/(?P<alias>[^/]+)", self.delete_alias),
            ("PUT", r"/signed/blobs/(?P<sha>[0-9a-f]{64})", self.put_blob),
            ("GET", r"/signed/blobs/(?P<sha>[0-9a-f]{64})", self.get_blob),
        ]
        for method, pattern, handler in routes:
            server.route(method, pattern, self._authed(handler) if pattern.startswith("/api") else handler)

    # plumbing
    def _authed(self, handler: Handler) -> Handler:
        def wrapped(seen: Seen, match: re.Match[str]) -> Reply:
            auth = seen.header("Authorization")
            if auth is not None and auth != f"Bearer {TOKEN}":
                return error(401, "authentication_failed", "unknown token")
            if auth is None:
                return error(401, "authentication_failed", "sign in")
            return handler(seen, match)

        return wrapped

    def _repo(self, match: re.Match[str]) -> dict[str, Any] | None:
        return self.repos.get(f"{match['ns']}/{match['name']}")

    def _version_json(self, repo_id: str, v: dict[str, Any], *, files: bool, created: bool = True) -> dict[str, Any]:
        aliases = ["latest"] if v["number"] == len(self.versions[repo_id]) else []
        aliases += [a for a, n in self.aliases.get(repo_id, {}).items() if n == v["number"]]
        out = {
            "repo": repo_id, "number": v["number"], "digest": v["digest"], "created": created,
            "message": v["message"], "created_at": "2025-01-01T00:00:00Z", "created_by": "alice",
            "aliases": aliases, "size": sum(f["size"] for f in v["files"]), "file_count": len(v["files"]),
            "base_model": None, "adapter": None, "metadata": v["metadata"],
        }
        if files:
            out["files"] = [dict(f, url=f"/signed/blobs/{f['sha256']}?sig=ok") for f in v["files"]]
        return out

    def add_version(self, repo_id: str, files: dict[str, bytes], *, kind: str = "adapter") -> dict[str, Any]:
        """Seed a repository version directly (no SDK involved)."""
        ns, name = repo_id.split("/")
        self.repos.setdefault(repo_id, {"id": repo_id, "namespace": ns, "name": name, "kind": kind,
                                        "visibility": "private", "description": "", "base_model": None,
                                        "peft_type": None, "latest_version": None})
        manifest = []
        for path, data in sorted(files.items()):
            sha = hashlib.sha256(data).hexdigest()
            self.blobs[sha] = data
            manifest.append({"path": path, "sha256": sha, "size": len(data)})
        return self._commit(repo_id, manifest, "", {}, [])

    def _commit(self, repo_id: str, manifest: list[dict[str, Any]], message: str,
                metadata: dict[str, Any], aliases: list[str]) -> dict[str, Any]:
        versions = self.versions.setdefault(repo_id, [])
        v = {"number": len(versions) + 1, "digest": canonical_digest(manifest),
             "files": sorted(manifest, key=lambda f: f["path"]), "message": message, "metadata": metadata}
        versions.append(v)
        self.repos[repo_id]["latest_version"] = v["number"]
        for alias in aliases:
            self.aliases.setdefault(repo_id, {})[alias] = v["number"]
        return v

    # API
    def whoami(self, seen: Seen, match: re.Match[str]) -> Reply:
        return Reply(200, {"username": "alice", "is_staff": False, "teams": [{"name": "acme", "role": "admin"}],
                           "token": {"id": 1, "name": "cli", "scope": "write", "expires_at": None}})

    def list_repos(self, seen: Seen, match: re.Match[str]) -> Reply:
        items = [r for r in self.repos.values()
                 if all(r.get(k) == seen.query[k] for k in ("kind", "namespace") if k in seen.query)]
        if "search" in seen.query:
            items = [r for r in items if seen.query["search"] in r["name"]]
        page, size = int(seen.query.get("page", 1)), int(seen.query.get("page_size", 50))
        chunk = items[(page - 1) * size : page * size]
        more = page * size < len(items)
        # `next` names the host the server believes it has: the client must not trust it.
        nxt = f"http://internal.invalid:9/api/v1/repos?page={page + 1}&page_size={size}" if more else None
        return Reply(200, {"count": len(items), "next": nxt, "previous": None, "results": chunk})

    def create_repo(self, seen: Seen, match: re.Match[str]) -> Reply:
        body = json.loads(seen.body)
        repo_id = f"{body['namespace']}/{body['name']}"
        if repo_id in self.repos:
            return error(409, "conflict", f"{repo_id} exists")
        self.repos[repo_id] = {"id": repo_id, "namespace": body["namespace"], "name": body["name"],
                               "kind": body["kind"], "visibility": body.get("visibility", "private"),
                               "description": body.get("description", ""), "base_model": body.get("base_model"),
                               "peft_type": "LORA" if body["kind"] == "adapter" else None, "latest_version": None}
        return Reply(201, self.repos[repo_id])

    def get_repo(self, seen: Seen, match: re.Match[str]) -> Reply:
        repo = self._repo(match)
        return Reply(200, repo) if repo else error(404, "not_found", "no such repository")

    def patch_repo(self, seen: Seen, match: re.Match[str]) -> Reply:
        repo = self._repo(match)
        if not repo:
            return error(404, "not_found", "no such repository")
        repo.update(json.loads(seen.body))
        return Reply(200, repo)

    def delete_repo(self, seen: Seen, match: re.Match[str]) -> Reply:
        if not self.repos.pop(f"{match['ns']}/{match['name']}", None):
            return error(404, "not_found", "no such repository")
        return Reply(204)

    def uploads(self, seen: Seen, match: re.Match[str]) -> Reply:
        if not self._repo(match):
            return error(404, "not_found", "no such repository")
        missing, present, done = [], [], set()
        for f in json.loads(seen.body)["files"]:
            if f["sha256"] in done:
                continue
            done.add(f["sha256"])
            if f["sha256"] in self.blobs:
                present.append(f["sha256"])
            else:
                missing.append({"sha256": f["sha256"], "size": f["size"], "upload": {
                    "method": "PUT", "url": f"{self.url}/signed/blobs/{f['sha256']}?sig=up",
                    "headers": {"X-Upload-Signature": f"sig-{f['sha256'][:8]}",
                                "Content-Type": "application/octet-stream"}}})
        return Reply(200, {"missing": missing, "present": present})

    def put_blob(self, seen: Seen, match: re.Match[str]) -> Reply:
        sha = match["sha"]
        if seen.query.get("sig") != "up":
            return error(403, "permission_denied", "bad signature")
        if hashlib.sha256(seen.body).hexdigest() != sha:
            return error(400, "digest_mismatch", "bytes do not match")
        self.blobs[sha] = seen.body
        return Reply(201, {"sha256": sha, "size": len(seen.body)})

    def commit(self, seen: Seen, match: re.Match[str]) -> Reply:
        repo_id = f"{match['ns']}/{match['name']}"
        if repo_id not in self.repos:
            return error(404, "not_found", "no such repository")
        body = json.loads(seen.body)
        manifest = [{"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in body["files"]]
        for f in manifest:
            if f["sha256"] not in self.blobs:
                return error(400, "missing_blob", f"{f['path']} was not uploaded")
        versions = self.versions.get(repo_id) or []
        if versions and canonical_digest(manifest) == versions[-1]["digest"]:
            return Reply(200, self._version_json(repo_id, versions[-1], files=True, created=False))
        v = self._commit(repo_id, manifest, body.get("message", ""), body.get("metadata") or {},
                         body.get("aliases") or [])
        return Reply(201, self._version_json(repo_id, v, files=True))

    def list_versions(self, seen: Seen, match: re.Match[str]) -> Reply:
        repo_id = f"{match['ns']}/{match['name']}"
        items = [self._version_json(repo_id, v, files=False) for v in reversed(self.versions.get(repo_id, []))]
        return Reply(200, {"count": len(items), "next": None, "previous": None, "results": items})

    def resolve(self, repo_id: str, rev: str) -> dict[str, Any] | None:
        versions = self.versions.get(repo_id) or []
        if rev == "latest":
            return versions[-1] if versions else None
        if rev.isdigit():
            n = int(rev)
            return versions[n - 1] if 0 < n <= len(versions) else None
        if rev.startswith("sha256:"):
            return next((v for v in versions if v["digest"] == rev), None)
        n = self.aliases.get(repo_id, {}).get(rev)
        return versions[n - 1] if n else None

    def get_version(self, seen: Seen, match: re.Match[str]) -> Reply:
        repo_id = f"{match['ns']}/{match['name']}"
        v = self.resolve(repo_id, match["rev"])
        if v is None:
            return error(404, "not_found", f"{repo_id}@{match['rev']} not found")
        return Reply(200, self._version_json(repo_id, v, files=True))

    def list_aliases(self, seen: Seen, match: re.Match[str]) -> Reply:
        repo_id = f"{match['ns']}/{match['name']}"
        return Reply(200, [{"name": a, "version": n, "updated_at": None, "updated_by": "alice"}
                           for a, n in self.aliases.get(repo_id, {}).items()])

    def put_alias(self, seen: Seen, match: re.Match[str]) -> Reply:
        repo_id = f"{match['ns']}/{match['name']}"
        v = self.resolve(repo_id, str(json.loads(seen.body)["version"]))
        if v is None:
            return error(404, "not_found", "no such version")
        self.aliases.setdefault(repo_id, {})[match["alias"]] = v["number"]
        return Reply(200, {"name": match["alias"], "version": v["number"], "updated_at": None, "updated_by": "alice"})

    def delete_alias(self, seen: Seen, match: re.Match[str]) -> Reply:
        repo_id = f"{match['ns']}/{match['name']}"
        if self.aliases.get(repo_id, {}).pop(match["alias"], None) is None:
            return error(404, "not_found", "no such alias")
        return Reply(204)

    def get_blob(self, seen: Seen, match: re.Match[str]) -> Reply:
        sha = match["sha"]
        if seen.query.get("sig") != "ok" or sha not in self.blobs:
            return error(404, "not_found", "no such blob")
        data = self.corrupt.get(sha, self.blobs[sha])
        cut = self.cut_next.pop(sha, None)
        rng = seen.header("Range")
        if rng and self.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                return error(416, "range_not_satisfiable", "range")
            part = data[start:]
            return Reply(206, part, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, cut_after=cut)
        return Reply(200, data, {"Accept-Ranges": "bytes"}, cut_after=cut)

    # queries for tests
    def blob_gets(self) -> list[Seen]:
        return self.server.requests("GET", "/signed/blobs/")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links followed) as relative path -> bytes; the
    snapshot marker ``.complete`` is left out."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != ".complete"
    }

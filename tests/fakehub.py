"""A local Hugging Face Hub for tests: a threaded HTTP server on 127.0.0.1 serving repos the tests create.

Why a real server and not mocks: the code under test is huggingface_hub's own client (listing, model info,
refs, commits, tree listing, HEAD/GET resolve with X-Repo-Commit/ETag, 404 error codes) plus timm's
`hf_hub:` loader on top of it. This speaks just enough of the Hub API for those calls (huggingface_hub 2.x).

    with FakeHub() as hub:
        sha = hub.publish("org/mlp", {"model.safetensors": data, "config.json": b"{}"})
        HfApi(endpoint=hub.url).model_info("org/mlp").sha == sha
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    title: str
    date: str


@dataclass
class Repo:
    repo_id: str
    commits: list[Commit] = field(default_factory=list)  # oldest first; the last one is `main`

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, rev: str) -> Commit | None:
        rev = unquote(rev)
        if rev in ("main", "refs/heads/main"):
            return self.head
        for c in self.commits:
            if c.sha == rev:
                return c
        return None


class FakeHub:
    """The server plus its repos. `publish` makes a new commit on `main`; `requests` logs (method, path)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- repos -------------------------------------------------------------------------------------------
    def publish(self, repo_id: str, files: dict[str, bytes | str | Path], title: str = "upload",
                replace: bool = False) -> str:
        """Commit `files` (bytes, text or a path to read) onto the repo's main branch; return the new sha.

        Files not named keep their previous content unless `replace` is set (like an upload_folder commit).
        """
        blobs = {}
        for name, content in files.items():
            if isinstance(content, Path):
                content = content.read_bytes()
            elif isinstance(content, str):
                content = content.encode()
            blobs[name] = content
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id))
            merged = {} if replace or not repo.commits else dict(repo.head.files)
            merged.update(blobs)
            h = hashlib.sha1(f"{repo_id}:{len(repo.commits)}:{title}".encode())
            for name in sorted(merged):
                h.update(name.encode() + b"\0" + hashlib.sha256(merged[name]).digest())
            commit = Commit(h.hexdigest(), merged, title, _now())
            repo.commits.append(commit)
            return commit.sha

    def delete(self, repo_id: str) -> None:
        with self._lock:
            self.repos.pop(repo_id, None)

    # -- server ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakehub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _model_json(repo: Repo, commit: Commit, files_metadata: bool = False) -> dict:
    siblings = []
    for name, data in sorted(commit.files.items()):
        s: dict = {"rfilename": name}
        if files_metadata:
            s.update(size=len(data), blobId=_blob_id(data),
                     lfs={"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134})
        siblings.append(s)
    org = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
    return {
        "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
        "author": org, "sha": commit.sha, "lastModified": commit.date, "createdAt": repo.commits[0].date,
        "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
        "tags": ["timm"] if "config.json" in commit.files else [], "library_name": None, "siblings": siblings,
    }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: object) -> None:
        self._send(200, json.dumps(obj).encode())

    def _error(self, code: int, error_code: str, message: str) -> None:
        self._send(code, json.dumps({"error": message}).encode(),
                   {"X-Error-Code": error_code, "X-Error-Message": message})

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _find(self, rest: str) -> tuple[Repo | None, str]:
        """Split 'org/name/more/parts' into the longest known repo id and the remainder."""
        parts = rest.split("/")
        for n in (2, 1):
            rid = "/".join(parts[:n])
            if rid in self.fake.repos:
                return self.fake.repos[rid], "/".join(parts[n:])
        return None, "/".join(parts[2:])

    def _route(self) -> None:
        u = urlparse(self.path)
        path, q = unquote(u.path), parse_qs(u.query)
        with self.fake._lock:
            self.fake.requests.append((self.command, path))
        if path in ("/api/models", "/api/models/"):
            return self._list(q)
        if path.startswith("/api/models/"):
            repo, rest = self._find(path[len("/api/models/"):])
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            return self._api(repo, rest, q)
        repo, rest = self._find(path.lstrip("/"))
        if rest.startswith("resolve/"):
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            rev, _, filename = rest[len("resolve/"):].partition("/")
            return self._resolve(repo, rev, filename)
        return self._error(404, "EntryNotFound", f"no route {path}")

    # -- endpoints ---------------------------------------------------------------------------------------
    def _list(self, q: dict[str, list[str]]) -> None:
        author = q.get("author", [None])[0]
        search = q.get("search", [None])[0]
        with self.fake._lock:
            repos = list(self.fake.repos.values())
        out = []
        for r in sorted(repos, key=lambda r: r.repo_id):
            if author and not r.repo_id.startswith(author + "/"):
                continue
            if search and search not in r.repo_id:
                continue
            out.append(_model_json(r, r.head))
        limit = q.get("limit", [None])[0]
        self._json(out[: int(limit)] if limit else out)

    def _api(self, repo: Repo, rest: str, q: dict[str, list[str]]) -> None:
        if rest in ("", "revision/main") or rest.startswith("revision/"):
            rev = rest[len("revision/"):] if rest else "main"
            c = repo.resolve(rev)
            if c is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return self._json(_model_json(repo, c, files_metadata="files_metadata" in q or "blobs" in q))
        if rest == "refs":
            return self._json({"branches": [{"name": "main", "ref": "refs/heads/main",
                                             "targetCommit": repo.head.sha}], "converts": [], "tags": []})
        if rest.startswith("commits/"):
            c = repo.resolve(rest[len("commits/"):])
            if c is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            upto = repo.commits[: repo.commits.index(c) + 1]
            return self._json([{"id": x.sha, "title": x.title, "message": "", "authors": [{"user": "test"}],
                                "date": x.date} for x in reversed(upto)])
        if rest.startswith("tree/"):
            rev, _, sub = rest[len("tree/"):].partition("/")
            c = repo.resolve(rev)
            if c is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            entries = []
            for name, data in sorted(c.files.items()):
                if sub and not name.startswith(sub.rstrip("/") + "/"):
                    continue
                entries.append({"type": "file", "oid": _blob_id(data), "size": len(data), "path": name,
                                "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                        "pointerSize": 134}})
            return self._json(entries)
        return self._error(404, "EntryNotFound", f"no route {rest}")

    def _resolve(self, repo: Repo, rev: str, filename: str) -> None:
        c = repo.resolve(rev)
        if c is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        data = c.files.get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist at {rev}")
        etag = hashlib.sha256(data).hexdigest()
        self._send(200, data, {"X-Repo-Commit": c.sha, "ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"',
                               "X-Linked-Size": str(len(data))}, content_type="application/octet-stream")

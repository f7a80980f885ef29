"""A loopback stand-in for the Hugging Face Hub's dataset API, for tests: it keeps repositories
in memory and records every call `huggingface_hub` makes, so a test can check exactly what a push
sends. Point the client at it with HF_ENDPOINT=<base_url>.

    POST /api/repos/create                          create a repository (409 if it exists)
    POST /api/validate-yaml                         a README's YAML: errors if it does not parse
    POST /api/datasets/{ns}/{name}/preupload/{rev}  every file "regular" (no LFS, no Xet)
    POST /api/datasets/{ns}/{name}/commit/{rev}     NDJSON: header, file (base64), deletedFile
    GET  /api/datasets/{ns}/{name}/tree/{rev}[/..]  the files, for upload_folder's deletions
    HEAD/GET /datasets/{ns}/{name}/resolve/{rev}/{path}   a file, as hf_hub_download reads it

Every call needs ``Authorization: Bearer <token>``; any other path answers 404 and is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


@dataclass
class Call:
    method: str
    path: str
    body: Any


@dataclass
class HubServer:
    token: str = "hf_test_token"
    repos: dict[str, Repo] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, name="hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def paths(self) -> list[str]:
        """Each call as "METHOD /path", in order."""
        return [f"{c.method} {c.path}" for c in self.calls]

    def add_file(self, repo_id: str, path: str, data: bytes) -> None:
        """A file committed by someone else (a person editing the card on the Hub)."""
        repo = self.repos.setdefault(repo_id, Repo(private=False))
        repo.files[path] = data
        repo.commits.append({"oid": _oid(repo.head, path), "summary": f"edit {path}"})


def _oid(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # --- plumbing ---------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None, head: bool = False) -> None:  # fmt: skip
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _record(self, body: Any) -> None:
        with self.hub._lock:
            self.hub.calls.append(Call(self.command, urlsplit(self.path).path, body))

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.hub.token}":
            return True
        self._send(401, {"error": "Invalid credentials in Authorization header"})
        return False

    # --- verbs ------------------------------------------------------------------------------

    def do_POST(self) -> None:
        raw = self._body()
        path = urlsplit(self.path).path
        if path.endswith("/commit/main"):
            body: Any = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        else:
            body = json.loads(raw or b"null")
        self._record(body)
        if not self._authorised():
            return
        if path == "/api/repos/create":
            return self._create(body)
        if path == "/api/validate-yaml":
            return self._validate(body)
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(preupload|commit)/main", path)
        if m and m.group(1) in self.hub.repos:
            return getattr(self, f"_{m.group(2)}")(m.group(1), body)
        self._send(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})

    def do_GET(self, head: bool = False) -> None:
        path = unquote(urlsplit(self.path).path)
        self._record(None)
        if not self._authorised():
            return
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/main(/.*)?", path)
        if m and m.group(1) in self.hub.repos:
            files = self.hub.repos[m.group(1)].files
            tree = [
                {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                for p, d in sorted(files.items())
            ]
            return self._send(200, tree, head=head)
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/main/(.+)", path)
        if m:
            return self._resolve(m.group(1), m.group(2), head)
        self._send(404, {"error": "not found"}, head=head)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    # --- the API ----------------------------------------------------------------------------

    def _create(self, body: dict[str, Any]) -> None:
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        url = f"{self.hub.base_url}/datasets/{repo_id}"
        if body.get("type") != "dataset":
            return self._send(400, {"error": "this test server keeps datasets only"})
        if repo_id in self.hub.repos:
            return self._send(409, {"error": "You already created this dataset repo", "url": url})
        private = body.get("visibility") == "private" or bool(body.get("private"))
        self.hub.repos[repo_id] = Repo(private=private)
        self._send(200, {"url": url, "name": repo_id, "id": _oid(repo_id)})

    def _validate(self, body: dict[str, Any]) -> None:
        content = str(body.get("content", ""))
        errors = []
        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as e:
            meta, errors = None, [{"message": f"invalid YAML: {e}"}]
        if not errors and not isinstance(meta, dict):
            errors = [{"message": "no YAML metadata block"}]
        self._send(200, {"errors": errors, "warnings": []})

    def _preupload(self, repo_id: str, body: dict[str, Any]) -> None:
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            for f in body.get("files", [])
        ]
        self._send(200, {"files": files, "commitOid": self.hub.repos[repo_id].head})

    def _commit(self, repo_id: str, lines: list[dict[str, Any]]) -> None:
        repo = self.hub.repos[repo_id]
        header = next((x["value"] for x in lines if x.get("key") == "header"), {})
        with self.hub._lock:
            for line in lines:
                value = line.get("value") or {}
                if line.get("key") == "file":
                    repo.files[value["path"]] = base64.b64decode(value["content"])
                elif line.get("key") == "deletedFile":
                    repo.files.pop(value["path"], None)
                elif line.get("key") == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for p in [p for p in repo.files if p.startswith(prefix)]:
                        del repo.files[p]
            oid = _oid(repo.head, json.dumps(lines, sort_keys=True))
            repo.commits.append({"oid": oid, "summary": header.get("summary", "")})
        url = f"{self.hub.base_url}/datasets/{repo_id}/commit/{oid}"
        self._send(200, {"commitUrl": url, "commitOid": oid, "success": True})

    def _resolve(self, repo_id: str, path: str, head: bool) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._send(404, {"error": "Repository not found"},
                              {"X-Error-Code": "RepoNotFound"}, head=head)  # fmt: skip
        data = repo.files.get(path)
        if data is None:
            return self._send(404, {"error": "Entry not found"},
                              {"X-Error-Code": "EntryNotFound"}, head=head)  # fmt: skip
        etag = f'"{hashlib.sha1(data).hexdigest()}"'
        headers = {"ETag": etag, "X-Repo-Commit": repo.head}
        self._send(200, raw=data, headers=headers, head=head)

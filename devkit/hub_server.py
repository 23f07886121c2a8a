"""A stand-in Hugging Face Hub on 127.0.0.1, answering huggingface_hub's HTTP calls the way the Hub does.

It serves repositories as commits of files: the model-info API (``/api/models/<repo>[/revision/<rev>]``, with
file sizes when asked for ``blobs``), file metadata and contents (``HEAD``/``GET /<repo>/resolve/<rev>/<path>``
with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``), and the Hub's error headers for a missing repository
or revision and for a gated one (which answers a request that carries its token).  Every request is recorded,
so a test can tell which commit was read.  It can also stall (accept requests and never answer them, as a Hub
behind a broken proxy does) or answer slowly.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repository:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> path -> content
    main: str = ""
    gated: bool = False
    token: str | None = None  # the one that opens a gated repository


@dataclass
class StandInHub:
    endpoint: str = ""
    repositories: dict[str, Repository] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    stalled: str | None = None  # requests whose path holds this are held unanswered ("": all of them)
    delay: float = 0.0  # seconds every answer waits: a slow Hub
    released: threading.Event = field(default_factory=threading.Event)  # set at the end: held requests close

    def push(self, repo_id: str, files: dict[str, bytes]) -> str:
        """A new commit on the default branch; returns its sha."""
        repository = self.repositories.setdefault(repo_id, Repository())
        sha = hashlib.sha1(repr((repo_id, len(repository.commits), sorted(files.items()))).encode()).hexdigest()
        repository.commits[sha] = dict(files)
        repository.main = sha
        return sha

    def change(self, repo_id: str, files: dict[str, bytes]) -> str:
        """A new commit on the default branch replacing ``files`` of its latest; returns its sha."""
        repository = self.repositories[repo_id]
        return self.push(repo_id, {**repository.commits[repository.main], **files})

    def gate(self, repo_id: str, token: str | None = None) -> None:
        """Refused without ``token`` (always, when None), as the Hub refuses a gated model to a stranger."""
        repository = self.repositories.setdefault(repo_id, Repository())
        repository.gated, repository.token = True, token

    def stall(self, what: str = "") -> None:
        """From now on a request whose path holds ``what`` ("/resolve/" for files, ".safetensors" for weights;
        "" for every request) is accepted and never answered."""
        self.stalled = what

    def files_read(self) -> list[str]:
        """The ``<repo>/resolve/<revision>/<path>`` part of each file download (GET)."""
        return [path.lstrip("/") for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def _commit(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        repository = self.repositories.get(repo_id)
        if repository is None or not repository.commits:
            return None
        sha = repository.main if revision == "main" else revision
        files = repository.commits.get(sha)
        return (sha, files) if files is not None else None


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, body: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.requests.append((self.command, path))
            if hub.stalled is not None and hub.stalled in path:
                hub.released.wait()
                self.close_connection = True
                return
            hub.released.wait(hub.delay)
            if path.startswith("/api/models/"):
                self._model_info(path.removeprefix("/api/models/"), blobs="blobs=" in url.query, body=body)
            elif "/resolve/" in path:
                repo_id, _, rest = path.lstrip("/").partition("/resolve/")
                revision, _, filename = rest.partition("/")
                self._file(repo_id, revision, filename, body=body)
            else:
                self._error(404, "EntryNotFound", "Not found", body)

        def _model_info(self, rest: str, blobs: bool, body: bool) -> None:
            repo_id, _, revision = rest.partition("/revision/")
            if self._refused(repo_id, body):
                return
            commit = hub._commit(repo_id, revision or "main")
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
                return
            sha, files = commit
            siblings = [
                {"rfilename": name, **({"size": len(data), "blobId": _etag(data)} if blobs else {})}
                for name, data in sorted(files.items())
            ]
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "siblings": siblings}
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

        def _file(self, repo_id: str, revision: str, filename: str, body: bool) -> None:
            if self._refused(repo_id, body):
                return
            commit = hub._commit(repo_id, revision)
            if commit is None or filename not in commit[1]:
                self._error(404, "EntryNotFound", f"{filename} does not exist at {revision}", body)
                return
            sha, files = commit
            data = files[filename]
            headers = {"X-Repo-Commit": sha, "ETag": f'"{_etag(data)}"', "Content-Type": "application/octet-stream"}
            self._send(200, data, headers, body)

        def _refused(self, repo_id: str, body: bool) -> bool:
            repository = hub.repositories.get(repo_id)
            if repository is None:
                self._error(404, "RepoNotFound", "Repository not found", body)
                return True
            if repository.gated and (
                repository.token is None or self.headers.get("Authorization") != f"Bearer {repository.token}"
            ):
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted.", body)
                return True
            return False

        def _error(self, status: int, code: str, message: str, body: bool) -> None:
            headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
            self._send(status, json.dumps({"error": message}).encode(), headers, body)

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def stand_in_hub() -> Iterator[StandInHub]:
    hub = StandInHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.released.set()
        server.shutdown()
        server.server_close()

"""A minimal Hugging Face Hub-compatible HTTP server on 127.0.0.1 for tests (model repos only).

It implements exactly what `huggingface_hub` and `transformers` call to publish and load a model:

| request | client call |
| --- | --- |
| `POST /api/repos/create` | `create_repo` |
| `POST /api/models/{repo}/branch/{branch}` | `create_branch` (optional `startingPoint`) |
| `GET /api/models/{repo}/refs` | `list_repo_refs` (`create_branch(exist_ok=True)` after a 403) |
| `POST /api/models/{repo}/preupload/{rev}` | `create_commit`: every file `"regular"`, so contents go inline |
| `POST /api/models/{repo}/commit/{rev}` | `create_commit`: NDJSON header + base64 `file` / `deletedFile` / `deletedFolder` lines |
| `GET /api/models/{repo}[/revision/{rev}]` | `model_info` / `repo_info` (sha, siblings, cardData from README.md) |
| `GET /api/models/{repo}/tree/{rev}[/{path}]` | `list_repo_tree` (used by `snapshot_download`); 404 `EntryNotFound` for a missing folder |
| `HEAD`/`GET /{repo}/resolve/{rev}/{path}` | `hf_hub_download`: `ETag`, `X-Repo-Commit`, `Content-Length` |
| `POST /api/validate-yaml` | `ModelCard.validate` and the README check of `create_commit` |
| `GET /api/whoami-v2` | `whoami` |
| `GET /api/agent-harnesses` | every client's user-agent (an empty registry) |

Tokens map to user names; writes need a valid `Authorization: Bearer` token (401 without one, 401
"Invalid credentials" for an unknown one) and a namespace the user owns (403 otherwise, and 403 for
repo ids the server is told to refuse). Private repos answer 404 `RepoNotFound` to anyone but their
owner. Blobs live in a temporary directory; request bodies are capped at `max_body_bytes`; every
request is recorded in `requests` and anything unimplemented in `unhandled`.
"""

import base64
import datetime
import fnmatch
import hashlib
import json
import re
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
# A subset of the Hub's licence identifiers and pipeline tags: enough to catch typos in tests.
KNOWN_LICENSES = {
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0", "cc0-1.0", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "openrail", "openrail++", "creativeml-openrail-m",
    "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "gemma", "other", "unknown",
}
KNOWN_PIPELINE_TAGS = {
    "audio-text-to-text", "audio-classification", "automatic-speech-recognition", "text-generation",
    "text-to-speech", "feature-extraction", "any-to-any",
}
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


class HubError(Exception):
    """An error answer: status, message, and the `X-Error-Code` the client dispatches on."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, str]  # path -> git blob sha1
    date: str


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    created_at: str = ""


def now() -> str:
    """The Hub's timestamp format (`parse_datetime` accepts only this one)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def front_matter(text: str) -> dict:
    """The YAML metadata block of a README (empty when there is none); raises `yaml.YAMLError`."""
    match = FRONT_MATTER.match(text)
    if not match:
        return {}
    return yaml.safe_load(match.group(1)) or {}


def metadata_errors(metadata) -> list[str]:
    """What the Hub would reject in a model card's metadata (the subset this server checks)."""
    if not isinstance(metadata, dict):
        return ["metadata must be a YAML mapping"]
    errors = []
    license_ = metadata.get("license")
    if license_ is not None and license_ not in KNOWN_LICENSES:
        errors.append(f'"license" must be a Hub licence identifier, got {license_!r}')
    if license_ == "other" and "license_name" not in metadata:
        errors.append('"license_name" is required when "license" is "other"')
    tag = metadata.get("pipeline_tag")
    if tag is not None and tag not in KNOWN_PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" must be a known task, got {tag!r}')
    for key in ("base_model", "datasets"):
        values = metadata.get(key)
        values = [values] if isinstance(values, str) else values or []
        if not isinstance(values, list) or not all(isinstance(v, str) and REPO_ID.match(v) for v in values):
            errors.append(f'"{key}" must be repo ids like "org/name", got {metadata.get(key)!r}')
    for key in ("tags", "language"):
        values = metadata.get(key)
        if values is not None and not (isinstance(values, str) or (isinstance(values, list) and all(isinstance(v, str) for v in values))):
            errors.append(f'"{key}" must be a string or a list of strings')
    errors += model_index_errors(metadata.get("model-index"))
    return errors


def model_index_errors(model_index) -> list[str]:
    if model_index is None:
        return []
    try:
        for entry in model_index:
            assert isinstance(entry["name"], str)
            for result in entry["results"]:
                assert isinstance(result["task"]["type"], str)
                assert isinstance(result["dataset"]["type"], str) and isinstance(result["dataset"]["name"], str)
                for metric in result["metrics"]:
                    assert isinstance(metric["type"], str) and isinstance(metric["value"], (int, float, str))
    except (AssertionError, KeyError, TypeError):
        return ['"model-index" must list {name, results: [{task.type, dataset.{type,name}, metrics: [{type, value}]}]}']
    return []


class HubState:
    """Repos, commits and blobs, guarded by one lock."""

    def __init__(self, root: Path, tokens: dict[str, str], organizations: dict[str, set[str]], refused: set[str]):
        self.root = root
        self.tokens = tokens
        self.organizations = organizations
        self.refused = refused
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    # Blobs are content addressed by their git sha1, like the Hub's regular files.
    def put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            path.write_bytes(data)
        return oid

    def blob_path(self, oid: str) -> Path:
        return self.root / "blobs" / oid

    def user(self, token: str | None) -> str | None:
        if token is None:
            return None
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def may_write(self, user: str | None, repo_id: str) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repo: pass a token")
        namespace = repo_id.split("/")[0]
        refused = any(fnmatch.fnmatchcase(repo_id, pattern) for pattern in self.refused)
        if refused or (namespace != user and user not in self.organizations.get(namespace, set())):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")

    def repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner and user not in self.organizations.get(repo.owner, set())):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def commit_of(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision if revision in repo.commits else None)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def new_commit(self, repo: Repo, parent: str | None, title: str, files: dict[str, str]) -> Commit:
        date = now()
        digest = hashlib.sha1(json.dumps([parent, title, sorted(files.items()), date, len(repo.commits)]).encode())
        commit = Commit(digest.hexdigest(), parent, title, files, date)
        repo.commits[commit.oid] = commit
        return commit


class HubRequestHandler(BaseHTTPRequestHandler):
    server_version = "TinyHub/1.0"
    timeout = 30  # a stalled client cannot hold a handler thread forever

    @property
    def state(self) -> HubState:
        return self.server.state

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass

    # --- plumbing ---------------------------------------------------------------------------
    def do_GET(self):
        self.dispatch("GET")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        segments = [unquote(part) for part in url.path.split("/")[1:]]
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.server.requests.append((method, url.path))
        try:
            body = self.read_body()
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
            with self.state.lock:
                user = self.state.user(token)
                handled = self.route(method, segments, body, user)
            if handled is None:
                self.server.unhandled.append((method, url.path))
                raise HubError(404, f"{method} {url.path} is not implemented by the test Hub")
        except HubError as error:
            payload = json.dumps({"error": error.message, **error.body}).encode()
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self.respond(error.status, payload, headers, method)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.max_body_bytes:
            self.close_connection = True
            raise HubError(413, f"request body of {length} bytes exceeds {self.server.max_body_bytes}")
        return self.rfile.read(length) if length else b""

    def respond(self, status: int, payload: bytes, headers: dict | None = None, method: str = "GET") -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def json(self, value, status: int = 200) -> bool:
        self.respond(status, json.dumps(value).encode())
        return True

    def route(self, method: str, segments: list[str], body: bytes, user: str | None) -> bool | None:
        if segments[:1] == ["api"]:
            rest = segments[1:]
            if method == "POST" and rest == ["validate-yaml"]:
                return self.validate_yaml(json.loads(body))
            if method == "GET" and rest == ["agent-harnesses"]:  # huggingface_hub's user-agent telemetry
                return self.json({"standardEnvVars": [], "harnesses": {}})
            if method == "GET" and rest == ["whoami-v2"]:
                if user is None:
                    raise HubError(401, "Invalid credentials in Authorization header")
                return self.json({"type": "user", "name": user, "orgs": []})
            if method == "POST" and rest == ["repos", "create"]:
                return self.create_repo(json.loads(body), user)
            if len(rest) >= 3 and rest[0] == "models":
                return self.repo_api(method, "/".join(rest[1:3]), rest[3:], body, user)
            return None
        if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve(method, "/".join(segments[:2]), segments[3], "/".join(segments[4:]), user)
        return None

    def repo_api(self, method: str, repo_id: str, rest: list[str], body: bytes, user: str | None) -> bool | None:
        if method == "GET" and (not rest or rest[0] == "revision"):
            repo = self.state.repo(repo_id, user)
            return self.model_info(repo, self.state.commit_of(repo, rest[1] if rest else "main"))
        if method == "GET" and rest == ["refs"]:
            repo = self.state.repo(repo_id, user)
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo.branches.items()]
            return self.json({"branches": branches, "tags": [], "converts": []})
        if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            return self.tree(self.state.repo(repo_id, user), rest[1], "/".join(rest[2:]))
        if method == "POST" and len(rest) == 2 and rest[0] in ("preupload", "commit", "branch"):
            self.state.may_write(user, repo_id)
            repo = self.state.repo(repo_id, user)
            handler = {"preupload": self.preupload, "commit": self.commit, "branch": self.create_branch}[rest[0]]
            return handler(repo, rest[1], body)
        return None

    # --- endpoints ----------------------------------------------------------------------------
    def validate_yaml(self, request: dict) -> bool:
        try:
            errors = metadata_errors(front_matter(request.get("content", "")))
        except yaml.YAMLError as error:
            errors = [f"invalid YAML: {error}"]
        if errors:
            return self.json({"errors": [{"message": message} for message in errors]}, status=400)
        return self.json({"errors": [], "warnings": []})

    def create_repo(self, request: dict, user: str | None) -> bool:
        if request.get("type", "model") != "model":
            raise HubError(400, "the test Hub only hosts model repos")
        namespace = request.get("organization") or user
        repo_id = f"{namespace}/{request['name']}"
        self.state.may_write(user, repo_id)
        url = f"{self.server.endpoint}/{repo_id}"
        if repo_id in self.state.repos:
            # The Hub names the existing repo: `create_repo(exist_ok=True)` reads the url from the 409.
            raise HubError(409, "You already created this model repo", url=url)
        private = request.get("visibility", "public") == "private" or bool(request.get("private"))
        repo = Repo(repo_id, namespace, private, created_at=now())
        initial = self.state.new_commit(repo, None, "initial commit", {".gitattributes": self.state.put_blob(GITATTRIBUTES)})
        repo.branches["main"] = initial.oid
        self.state.repos[repo_id] = repo
        return self.json({"url": url, "name": repo_id, "id": repo_id})

    def create_branch(self, repo: Repo, branch: str, body: bytes) -> bool:
        if branch.startswith("refs/") or not branch:
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        starting_point = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[branch] = self.state.commit_of(repo, starting_point).oid
        return self.json({})

    def preupload(self, repo: Repo, revision: str, body: bytes) -> bool:
        files = self.state.commit_of(repo, revision).files if revision in repo.branches else {}
        answer = [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(item["path"])}
            for item in json.loads(body)["files"]
        ]
        return self.json({"files": answer, "commitOid": repo.branches.get(revision)})

    def commit(self, repo: Repo, revision: str, body: bytes) -> bool:
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit payload starts with a header line")
        header = lines[0]["value"]
        head = repo.branches[revision]
        if header.get("parentCommit") and not head.startswith(header["parentCommit"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = self.state.put_blob(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: oid for path, oid in files.items() if not path.startswith(prefix)}
            else:
                raise HubError(400, f"the test Hub stores every file inline; cannot commit a {key!r} line")
        commit = self.state.new_commit(repo, head, header.get("summary", ""), files)
        repo.branches[revision] = commit.oid
        return self.json({
            "success": True, "commitOid": commit.oid, "commitUrl": f"{self.server.endpoint}/{repo.repo_id}/commit/{commit.oid}",
            "pullRequestUrl": None, "hookOutput": "",
        })

    def model_info(self, repo: Repo, commit: Commit) -> bool:
        card_data = None
        if "README.md" in commit.files:
            try:
                card_data = front_matter(self.state.blob_path(commit.files["README.md"]).read_text())
            except yaml.YAMLError:
                card_data = None
        config = None
        if "config.json" in commit.files:
            config = json.loads(self.state.blob_path(commit.files["config.json"]).read_text())
        info = {
            "_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.owner, "sha": commit.oid,
            "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private, "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": list((card_data or {}).get("tags") or []),
            "pipeline_tag": (card_data or {}).get("pipeline_tag"), "library_name": (card_data or {}).get("library_name"),
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }
        if card_data is not None:
            info["cardData"] = card_data
        if config is not None:
            info["config"] = {key: config[key] for key in ("architectures", "model_type", "auto_map") if key in config}
        return self.json(info)

    def tree(self, repo: Repo, revision: str, folder: str) -> bool:
        commit = self.state.commit_of(repo, revision)
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        prefix = folder.rstrip("/") + "/" if folder else ""
        entries, folders = [], set()
        for path, oid in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix):]
            if "/" in relative:
                parts = relative.split("/")
                depth = len(parts) - 1 if recursive else 1
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
                if not recursive:
                    continue
            entries.append({"type": "file", "oid": oid, "size": self.state.blob_path(oid).stat().st_size, "path": path})
        if folder and not entries and not folders:
            raise HubError(404, f"Entry not found: {folder}", "EntryNotFound")
        entries += [{"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p} for p in sorted(folders)]
        return self.json(entries)

    def resolve(self, method: str, repo_id: str, revision: str, path: str, user: str | None) -> bool:
        repo = self.state.repo(repo_id, user)
        commit = self.state.commit_of(repo, revision)
        oid = commit.files.get(path)
        if oid is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = self.state.blob_path(oid).read_bytes()
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{oid}"', "X-Repo-Commit": commit.oid}
        self.respond(200, data, headers, method)
        return True


class HubServer(ThreadingHTTPServer):
    """The test Hub, serving from a thread; use as a context manager (`endpoint`, `requests`)."""

    daemon_threads = True

    def __init__(
        self,
        tokens: dict[str, str],
        organizations: dict[str, set[str]] | None = None,
        refused: set[str] = frozenset(),
        max_body_bytes: int = 64 * 2**20,
    ):
        super().__init__(("127.0.0.1", 0), HubRequestHandler)
        self.root = Path(tempfile.mkdtemp(prefix="tiny_hub_"))
        self.state = HubState(self.root, tokens, organizations or {}, set(refused))
        self.max_body_bytes = max_body_bytes
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        super().server_bind()

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Contents of every file of a repo at a revision (for assertions)."""
        with self.state.lock:
            repo = self.state.repos[repo_id]
            commit = self.state.commit_of(repo, revision)
            return {path: self.state.blob_path(oid).read_bytes() for path, oid in commit.files.items()}

    def history(self, repo_id: str, revision: str = "main") -> list[str]:
        """Commit titles from the revision back to the repo's creation, newest first."""
        with self.state.lock:
            repo = self.state.repos[repo_id]
            commit, titles = self.state.commit_of(repo, revision), []
            while commit is not None:
                titles.append(commit.title)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return titles

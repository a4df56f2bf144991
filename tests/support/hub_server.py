"""In-process fake of the Hugging Face Hub HTTP API, for tests.

`FakeHub` is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (random free port, background thread) that speaks enough
of the Hub protocol for the *real* ``huggingface_hub`` 2.4 client, and therefore ``transformers``' and ``diffusers``'
``from_pretrained`` / ``push_to_hub``, with ``HF_ENDPOINT=<hub.endpoint>`` and ``HF_HUB_DISABLE_XET=1`` (uploads then
take the legacy git-LFS path). Nothing is written to disk by the server: repos and blobs live in memory.

Usage::

    with fake_hub() as hub:                      # server + this process's client pointed at it
        HfApi().create_repo("alice/tiny", token="token-alice")
        subprocess.run(cmd, env={**os.environ, **hub.env()})   # child processes: env vars only

    # pytest: the ``hub_server`` fixture (tests/conftest.py) yields the FakeHub of ``fake_hub(hf_home=tmp_path/...)``.

Supported (model, dataset and space repos):
  * ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``GET /api/whoami-v2``, ``POST /api/validate-yaml``
    (always valid), ``GET /api/agent-harnesses`` (empty registry, fetched by the client's header builder).
  * ``GET /api/{type}s/{id}[/revision/{rev}]`` (``?blobs=1`` adds sizes/LFS info to siblings), ``.../tree/{rev}[/{path}]``
    (``?recursive=``), ``POST .../paths-info/{rev}``, ``GET .../refs``, ``GET .../commits/{rev}``, ``POST .../branch/{b}``.
  * Uploads: ``POST .../preupload/{rev}``; git-LFS ``POST /{[type/]id}.git/info/lfs/objects/batch`` (basic transfer:
    one PUT to a one-off upload URL, checked against the announced sha256 and size, 400 on mismatch; then
    ``.../objects/verify``); ``POST .../commit/{rev}`` (NDJSON: header [+ parentCommit], file, lfsFile, deletedFile,
    deletedFolder) creating a new commit.
  * ``HEAD``/``GET /{[type/]id}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (git blob sha1; sha256 for LFS
    files, also sent as ``X-Linked-Etag`` with ``X-Linked-Size``), ``Content-Length`` and a single ``Range``.
    404s carry ``X-Error-Code`` RepoNotFound / RevisionNotFound / EntryNotFound.
  * Git-like history: each commit has a 40-hex sha; a revision is a branch name or a commit sha (or unique prefix).
    New repos start with an "initial commit" holding ``.gitattributes``, like on the real Hub.
  * Upload mode: "lfs" for files of ``lfs_threshold`` bytes (1 MB) or more, with a NUL byte in the sample, or with a
    weight/data suffix (``LFS_SUFFIXES``: .safetensors, .bin, .png, .parquet, ...); "regular" otherwise.
  * Auth, mirroring the real Hub: tokens are fixed at construction (``{"token-alice": "alice"}``; organisations via
    ``orgs={"acme": ["alice"]}``). An unknown token is refused everywhere with 401 "Invalid credentials in
    Authorization header" (client: ``HfHubHTTPError``). Private or missing repos are hidden: 401 + RepoNotFound
    without a token, 404 + RepoNotFound with a token lacking access (client: ``RepositoryNotFoundError``). Writes need
    a token whose user is the namespace or a member of the org: 401 without a token, 403 otherwise.

Injected failures: ``drop_connection`` (no answer, the connection closed) and ``hold_request`` (no answer for a
bounded time: a hung Hub, for the client's timeouts).

Not supported: Xet storage, pull requests (``create_pr``), tags, discussions, multipart LFS, pagination (one page),
gated repos, Space runtimes, cross-repo copies, ``expand``/last-commit info, search and listings, rate limits.

Quirks of huggingface_hub 2.4 that `patch_hf_client` deals with (so the client *in this process* uses the server):
  * ``HF_ENDPOINT`` is read at import into ``constants.ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE`` and
    ``HF_URL_HOSTS``; ``utils._http._HUB_ORIGINS`` is derived from it; the module-level ``huggingface_hub.hf_api.api``
    (behind ``create_repo``, ``upload_folder``, ...) and transformers' cached ``transformers.utils.hub._hf_api``
    keep the endpoint they were created with. ``HF_HUB_DISABLE_XET`` (``hf_xet`` is installed), telemetry, offline
    mode, HF_HOME, the cache and the token path are also frozen at import.
  * The first ``build_hf_headers`` call fetches ``{ENDPOINT}/api/agent-harnesses`` (cached under HF_HOME for a day).
  * The client maps a bare 401 to ``RepositoryNotFoundError`` only for ``https://`` URLs, hence the explicit
    ``X-Error-Code: RepoNotFound`` here.
  * LFS upload PUTs carry no Authorization header, so upload URLs embed a one-off ticket.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKENS = {"token-alice": "alice", "token-bob": "bob"}
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy", ".npz", ".pkl",
                ".png", ".jpg", ".jpeg", ".parquet", ".arrow", ".zip", ".gz", ".tar")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.headers, self.extra = status, code, headers or {}, extra


@dataclass(frozen=True)
class Entry:
    sha256: str  # key of the content in FakeHub.blobs
    size: int
    lfs: bool
    git_oid: str  # git blob sha1 of the content (of the LFS pointer for LFS files)


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, Entry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class FakeHub:
    """The fake Hub: ``start()``/``stop()`` or use as a context manager; ``endpoint`` is its base URL."""

    def __init__(self, tokens: dict[str, str] | None = None, *, orgs: dict[str, list[str]] | None = None,
                 lfs_threshold: int = 1_000_000):
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)  # token -> user name
        self.orgs = {org: set(members) for org, members in (orgs or {}).items()}
        self.lfs_threshold = lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}  # (type, id) -> Repo
        self.blobs: dict[str, bytes] = {}  # sha256 -> content, for regular and LFS files alike
        self.requests: list[tuple[str, str]] = []  # (method, raw path) of every request received
        self.errors: list[str] = []  # unexpected server-side exceptions (a bug in this fake)
        self.hf_home: Path | None = None  # set by `fake_hub`
        self._tickets: dict[str, tuple[str, int]] = {}  # LFS upload ticket -> (oid, size)
        self.faults: list[dict] = []  # injected transport failures, see `drop_connection`
        self._counter = 0
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()  # releases held requests (`hold_request`) when the server stops

    # ----- injected transport failures -----
    def drop_connection(self, method: str, path_pattern: str, *, after_handling: bool = False, times: int = 1) -> None:
        """Close the connection without answering the next `times` requests whose method is `method` and whose path
        matches the regex `path_pattern` (the client sees a transport error, not an HTTP status). With
        `after_handling`, the request takes effect first (a commit that went through but whose answer was lost)."""
        self.faults.append({"method": method, "pattern": re.compile(path_pattern), "after": after_handling,
                            "times": times})

    def hold_request(self, method: str, path_pattern: str, *, seconds: float = 5.0, times: int = 1) -> None:
        """Hold the next `times` matching requests without answering (a Hub that accepted the connection and hangs):
        the server waits up to `seconds` (or until it stops), then closes the connection. The request is not
        handled. For testing a client's timeouts; `seconds` bounds how long a test can be held."""
        self.faults.append({"method": method, "pattern": re.compile(path_pattern), "after": False, "times": times,
                            "hold": seconds})

    def _fault(self, method: str, path: str) -> dict | None:
        with self._lock:
            for fault in self.faults:
                if fault["times"] > 0 and fault["method"] == method and fault["pattern"].search(path):
                    fault["times"] -= 1
                    return fault
        return None

    # ----- lifecycle -----
    def start(self) -> FakeHub:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-hf-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "FakeHub is not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def env(self, hf_home: str | os.PathLike | None = None) -> dict[str, str]:
        """Environment variables that point a fresh process (e.g. a subprocess) at this server."""
        env = {"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "NO_PROXY": "127.0.0.1,localhost",
               "no_proxy": "127.0.0.1,localhost"}
        hf_home = hf_home if hf_home is not None else self.hf_home
        if hf_home is not None:
            env["HF_HOME"] = str(hf_home)
        return env

    # ----- HTTP plumbing -----
    def _handle(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        segs = [unquote(s) for s in url.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = h.read_body()
        with self._lock:
            self.requests.append((h.command, h.path))
        fault = self._fault(h.command, url.path)
        if fault is not None and not fault["after"]:
            if fault.get("hold"):
                self._stopping.wait(fault["hold"])  # a hung Hub: no answer until the client gives up (or we stop)
            h.close_connection = True  # no status line at all: the client's connection breaks
            return
        try:
            user = self._user(h.headers.get("Authorization"))
            with self._lock:
                status, payload, headers = self._route(h.command, segs, query, body, user, h.headers)
        except HubError as e:
            msg = str(e).replace("\n", " ")
            status, payload = e.status, {"error": msg, **e.extra}
            headers = {**e.headers, "X-Error-Message": msg, **({"X-Error-Code": e.code} if e.code else {})}
        except Exception as e:  # a bug in the fake: report it loudly
            self.errors.append(f"{h.command} {h.path}: {e!r}")
            status, payload, headers = 500, {"error": repr(e)}, {}
        if fault is not None:  # handled, but the answer is lost
            h.close_connection = True
            return
        h.reply(status, payload, headers)

    def _user(self, auth: str | None) -> str | None:
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _can_write(self, user: str | None, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _get_repo(self, rtype: str, repo_id: str, user: str | None, write: bool = False) -> Repo:
        repo = self.repos.get((rtype, repo_id))
        if repo is None or (repo.private and not self._can_write(user, repo_id)):
            raise HubError(401 if user is None else 404, f"Repository not found: {repo_id}", "RepoNotFound")
        if write and not self._can_write(user, repo_id):
            raise HubError(401 if user is None else 403, f"You don't have write access to {repo_id}")
        return repo

    def _route(self, method, segs, q, body, user, headers):
        if segs[0] == "api":
            return self._api(method, segs[1:], q, body, user)
        if segs[0] == "__lfs__" and method == "PUT" and len(segs) == 2:
            return self._lfs_put(segs[1], body)
        rtype = "model"
        if segs[0] in ("datasets", "spaces"):
            rtype, segs = REPO_TYPES[segs[0]], segs[1:]
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(rtype, f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]), user, headers.get("Range"))
        if len(segs) == 6 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"] and method == "POST":
            repo = self._get_repo(rtype, f"{segs[0]}/{segs[1][:-4]}", user, write=True)
            if segs[5] == "batch":
                return self._lfs_batch(repo, json.loads(body))
            if segs[5] == "verify":
                req = json.loads(body)
                if len(self.blobs.get(req["oid"], b"")) != req["size"] or req["oid"] not in self.blobs:
                    raise HubError(422, f"LFS object {req['oid']} is missing or has the wrong size")
                return 200, {"message": "ok"}, {}
        raise HubError(404, f"Not found: {method} /{'/'.join(segs)}")

    # ----- /api -----
    def _api(self, method, segs, q, body, user):
        match (method, segs):
            case ("GET", ["whoami-v2"]):
                if user is None:
                    raise HubError(401, "Invalid credentials in Authorization header")
                orgs = [{"name": o, "type": "org", "roleInOrg": "write"} for o, m in self.orgs.items() if user in m]
                return 200, {"type": "user", "id": user, "name": user, "fullname": user, "orgs": orgs,
                             "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}}}, {}
            case ("GET", ["agent-harnesses"]):
                return 200, {"standardEnvVars": [], "harnesses": {}}, {}
            case ("POST", ["validate-yaml"]):
                return 200, {"errors": [], "warnings": []}, {}
            case ("POST", ["repos", "create"]):
                return self._create_repo(json.loads(body), user)
            case ("DELETE", ["repos", "delete"]):
                req = json.loads(body)
                rtype, repo_id = req.get("type") or "model", f"{req.get('organization') or user}/{req['name']}"
                del self.repos[(rtype, self._get_repo(rtype, repo_id, user, write=True).id)]
                return 200, {}, {}
            case (_, [plural, namespace, name, *rest]) if plural in REPO_TYPES:
                return self._repo_api(method, REPO_TYPES[plural], f"{namespace}/{name}", rest, q, body, user)
        raise HubError(404, f"Not found: {method} /api/{'/'.join(segs)}")

    def _create_repo(self, req: dict, user: str | None):
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        rtype, namespace = req.get("type") or "model", req.get("organization") or user
        repo_id = f"{namespace}/{req['name']}"
        if not self._can_write(user, repo_id):
            raise HubError(403, f'You don\'t have the rights to create a {rtype} under the namespace "{namespace}"')
        url = f"{self.endpoint}/{URL_PREFIX[rtype]}{repo_id}"
        if (rtype, repo_id) in self.repos:
            raise HubError(409, f"You already created this {rtype} repo: {repo_id}", url=url)  # client reads "url"
        private = bool(req.get("private")) or req.get("visibility") == "private"
        repo = self.repos[(rtype, repo_id)] = Repo(rtype, repo_id, private, _now())
        init = self._new_commit(repo, None, {".gitattributes": self._store(GITATTRIBUTES)}, "initial commit", "", user)
        repo.branches["main"] = init.oid
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _repo_api(self, method, rtype, repo_id, rest, q, body, user):
        repo = self._get_repo(rtype, repo_id, user, write=rest[:1] in (["preupload"], ["commit"], ["branch"]))
        match (method, rest):
            case ("GET", []) | ("GET", ["revision", _]):
                return 200, self._info(repo, rest[1] if rest else "main", _true(q.get("blobs"))), {}
            case ("GET", ["tree", rev, *path]):
                return 200, self._tree(repo, rev, "/".join(path).strip("/"), _true(q.get("recursive"))), {}
            case ("POST", ["paths-info", rev]):
                commit = self._commit_at(repo, rev)
                text = body.decode()
                paths = json.loads(text)["paths"] if text.startswith("{") else parse_qs(text).get("paths", [])
                dirs = {d for p in commit.files for d in self._parents(p)}
                return 200, [self._file_json(p, commit.files[p]) if p in commit.files else self._dir_json(p, commit)
                             for p in (p.strip("/") for p in paths) if p in commit.files or p in dirs], {}
            case ("GET", ["refs"]):
                branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()]
                return 200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}, {}
            case ("GET", ["commits", rev]):
                commit, out = self._commit_at(repo, rev), []
                while commit is not None:
                    out.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                                "authors": [{"user": commit.author}], "date": commit.date})
                    commit = repo.commits.get(commit.parent) if commit.parent else None
                return 200, out, {}
            case ("POST", ["preupload", rev]):
                return self._preupload(repo, rev, json.loads(body))
            case ("POST", ["commit", rev]):
                return self._commit(repo, rev, q, body, user)
            case ("POST", ["branch", branch]):
                if branch in repo.branches:
                    raise HubError(409, f"Branch {branch} already exists")
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.branches[branch] = self._commit_at(repo, start).oid
                return 200, {}, {}
        raise HubError(404, f"Not found: {method} {'/'.join(rest)} on {repo_id}")

    # ----- reads -----
    def _commit_at(self, repo: Repo, rev: str) -> Commit:
        rev = rev.removeprefix("refs/heads/")
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        hits = [c for oid, c in repo.commits.items() if oid.startswith(rev)] if re.fullmatch(r"[0-9a-f]{7,40}", rev) else []
        if len(hits) != 1:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return hits[0]

    @staticmethod
    def _parents(path: str) -> list[str]:
        parts = path.split("/")
        return ["/".join(parts[:i]) for i in range(1, len(parts))]

    @staticmethod
    def _file_json(path: str, e: Entry) -> dict:
        out = {"type": "file", "path": path, "size": e.size, "oid": e.git_oid}
        if e.lfs:
            out["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(_pointer(e.sha256, e.size))}
        return out

    @staticmethod
    def _dir_json(path: str, commit: Commit) -> dict:
        return {"type": "directory", "path": path, "oid": hashlib.sha1(f"{commit.oid}:{path}".encode()).hexdigest()}

    def _info(self, repo: Repo, rev: str, blobs: bool) -> dict:
        commit = self._commit_at(repo, rev)
        siblings = []
        for path, e in sorted(commit.files.items()):
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=e.size, blobId=e.git_oid)
                if e.lfs:
                    sibling["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": len(_pointer(e.sha256, e.size))}
            siblings.append(sibling)
        return {"_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24], "id": repo.id, "author": repo.id.split("/")[0],
                "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created, "private": repo.private,
                "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(e.size for e in commit.files.values())}

    def _tree(self, repo: Repo, rev: str, path: str, recursive: bool) -> list[dict]:
        commit = self._commit_at(repo, rev)
        prefix = f"{path}/" if path else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        files, dirs = [], set()
        for p, e in commit.files.items():
            if p.startswith(prefix):
                rel = p[len(prefix):]
                dirs.update(prefix + d for d in self._parents(rel)[: None if recursive else 1])
                if recursive or "/" not in rel:
                    files.append(self._file_json(p, e))
        return sorted(files + [self._dir_json(d, commit) for d in dirs], key=lambda x: x["path"])

    def _resolve(self, rtype, repo_id, rev, path, user, range_header):
        commit = self._commit_at(self._get_repo(rtype, repo_id, user), rev)
        e = commit.files.get(path)
        if e is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = self.blobs[e.sha256]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{e.sha256 if e.lfs else e.git_oid}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if e.lfs:
            headers.update({"X-Linked-Etag": f'"{e.sha256}"', "X-Linked-Size": str(e.size)})
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if m:
            start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start : end + 1], headers
        return 200, data, headers

    # ----- writes -----
    def _store(self, data: bytes) -> Entry:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return Entry(sha, len(data), False, _git_oid(data))

    def _new_commit(self, repo: Repo, parent: str | None, files: dict, title: str, message: str, author: str) -> Commit:
        self._counter += 1
        date = _now()
        seed = [repo.type, repo.id, parent, sorted((p, e.git_oid) for p, e in files.items()), title, date, self._counter]
        oid = hashlib.sha1(json.dumps(seed).encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, files, title, message, author, date)
        return repo.commits[oid]

    def _preupload(self, repo: Repo, rev: str, req: dict):
        commit = self._commit_at(repo, rev)
        out = []
        for f in req["files"]:
            sample = base64.b64decode(f.get("sample") or "")
            lfs = f["size"] >= self.lfs_threshold or f["path"].lower().endswith(LFS_SUFFIXES) or b"\0" in sample
            e = commit.files.get(f["path"])
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": (e.sha256 if e.lfs else e.git_oid) if e else None})
        return 200, {"files": out, "commitOid": commit.oid}, {}

    def _lfs_batch(self, repo: Repo, req: dict):
        if req.get("operation") != "upload":
            raise HubError(400, "The fake Hub only supports LFS upload batches")
        verify = f"{self.endpoint}/{URL_PREFIX[repo.type]}{repo.id}.git/info/lfs/objects/verify"
        objects = []
        for o in req["objects"]:
            obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.blobs:  # else: already stored, no "actions" => the client skips the upload
                ticket = secrets.token_hex(16)
                self._tickets[ticket] = (o["oid"], o["size"])
                obj["actions"] = {"upload": {"href": f"{self.endpoint}/__lfs__/{ticket}"}, "verify": {"href": verify}}
            objects.append(obj)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_put(self, ticket: str, body: bytes):
        if ticket not in self._tickets:
            raise HubError(403, "Unknown or already used LFS upload URL")
        oid, size = self._tickets[ticket]
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match the announced sha256 {oid} and size {size}")
        del self._tickets[ticket]
        self.blobs[oid] = body
        return 200, b"", {"ETag": f'"{oid}"'}

    def _commit(self, repo: Repo, rev: str, q: dict, body: bytes, user: str):
        if _true(q.get("create_pr")):
            raise HubError(400, "The fake Hub does not support pull requests (create_pr)")
        branch = rev.removeprefix("refs/heads/")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev} (commits go to a branch)", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        if header.get("parentCommit") and not head.oid.startswith(header["parentCommit"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines:
            key, v = line["key"], line["value"]
            path = str(v.get("path", "")).strip("/")
            if key != "header" and (not path or ".." in path.split("/")):
                raise HubError(400, f"Invalid path in commit: {v.get('path')!r}")
            if key == "file":
                files[path] = self._store(base64.b64decode(v["content"]))
            elif key == "lfsFile":
                if v["oid"] not in self.blobs:
                    raise HubError(422, f"LFS object {v['oid']} for {path} was not uploaded")
                size = len(self.blobs[v["oid"]])
                files[path] = Entry(v["oid"], size, True, _git_oid(_pointer(v["oid"], size)))
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(path + "/")]:
                    del files[p]
            elif key != "header":
                raise HubError(400, f"Unsupported commit operation: {key}")
        commit = self._new_commit(repo, head.oid, files, header.get("summary") or "Update", header.get("description") or "", user)
        repo.branches[branch] = commit.oid
        url = f"{self.endpoint}/{URL_PREFIX[repo.type]}{repo.id}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _dispatch(self) -> None:
        self.server.hub._handle(self)  # type: ignore[attr-defined]

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def read_body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after each chunk
        while self.rfile.readline().strip():  # trailers, up to the blank line
            pass
        return b"".join(chunks)

    def reply(self, status: int, payload, headers: dict) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# ----- pointing the huggingface_hub client of this process at a server -----
def _refuse_non_loopback(request) -> None:
    if request.url.host not in LOOPBACK_HOSTS:
        raise RuntimeError(f"fake hub: refusing to send {request.method} {request.url} outside of loopback")


@contextlib.contextmanager
def patch_hf_client(endpoint: str, *, hf_home: str | os.PathLike):
    """Make huggingface_hub (and transformers/diffusers on top of it) in THIS process talk to `endpoint` only.

    Sets the environment (for subprocesses and late readers), patches the import-time constants and cached
    endpoints listed in the module docstring, removes ``HF_TOKEN`` so only explicit tokens are sent, isolates
    HF_HOME (cache, token file) in `hf_home`, and installs an HTTP client that raises on any non-loopback request.
    Everything is restored on exit.
    """
    import huggingface_hub
    from huggingface_hub import constants as C, hf_api
    from huggingface_hub.utils import _detect_agent, _http

    home = str(hf_home)
    host = urlsplit(endpoint).hostname
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "HF_HOME": home, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    patches = [(C, "ENDPOINT", endpoint), (C, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
               (C, "HF_URL_HOSTS", C.HF_URL_HOSTS | {host}), (C, "HF_HUB_DISABLE_XET", True),
               (C, "HF_HUB_DISABLE_TELEMETRY", True), (C, "HF_HUB_OFFLINE", False), (C, "HF_HOME", home),
               (C, "HF_HUB_CACHE", os.path.join(home, "hub")), (C, "HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")),
               (C, "HF_ASSETS_CACHE", os.path.join(home, "assets")), (C, "HF_XET_CACHE", os.path.join(home, "xet")),
               (C, "HF_TOKEN_PATH", os.path.join(home, "token")), (C, "HF_STORED_TOKENS_PATH", os.path.join(home, "stored_tokens")),
               (C, "AGENT_HARNESSES_PATH", os.path.join(home, ".agent_harnesses.json")),
               (hf_api.api, "endpoint", endpoint), (_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)}),
               (_detect_agent, "_registry", _detect_agent._registry or _detect_agent._EMPTY_REGISTRY)]
    tf_hub = sys.modules.get("transformers.utils.hub")
    saved_tf_api = getattr(tf_hub, "_hf_api", None)
    saved_env = {k: os.environ.get(k) for k in [*env, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]}
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    old_factory = _http._GLOBAL_CLIENT_FACTORY

    def guarded_factory():
        client = old_factory()
        hooks = client.event_hooks
        hooks["request"] = [*hooks.get("request", []), _refuse_non_loopback]
        client.event_hooks = hooks
        return client

    try:
        os.environ.update(env)
        for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            os.environ.pop(k, None)
        for obj, name, value in patches:
            setattr(obj, name, value)
        if tf_hub is not None:
            tf_hub._hf_api = None  # transformers' lazily created HfApi: recreated with the patched endpoint
        huggingface_hub.set_client_factory(guarded_factory)
        yield
    finally:
        huggingface_hub.set_client_factory(old_factory)
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        if (tf_hub := sys.modules.get("transformers.utils.hub")) is not None:
            tf_hub._hf_api = saved_tf_api
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def fake_hub(tokens: dict[str, str] | None = None, *, orgs: dict[str, list[str]] | None = None,
             hf_home: str | os.PathLike | None = None, lfs_threshold: int = 1_000_000):
    """Start a `FakeHub` and point this process's Hub client at it (see `patch_hf_client`); yields the hub.

    `hf_home` defaults to a temporary folder removed on exit; it is also in ``hub.env()`` for subprocesses.
    """
    tmp = tempfile.mkdtemp(prefix="fake-hf-home-") if hf_home is None else None
    try:
        with FakeHub(tokens, orgs=orgs, lfs_threshold=lfs_threshold) as hub:
            hub.hf_home = Path(tmp or hf_home)  # type: ignore[arg-type]
            with patch_hf_client(hub.endpoint, hf_home=hub.hf_home):
                yield hub
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

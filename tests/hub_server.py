"""A small local Hugging Face Hub look-alike, for tests and offline demos.

hubmerge's tests must drive the real ``huggingface_hub`` client over real HTTP (2.x talks through its own
vendored httpx, so respx-style mocks do not intercept it), and nothing here may reach huggingface.co.
This module serves the part of the Hub API that the client uses for users, repos, uploads and downloads,
with the headers and X-Error-Code values the client relies on (checked against huggingface_hub 2.4.0),
from a store on disk. Standard library only.

Client setup (important):
  * Disable Xet: ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True`` (read on every call) or set
    ``HF_HUB_DISABLE_XET=1`` *before* importing huggingface_hub. Otherwise every LFS upload goes through
    Xet, which this server cannot take (symptom: a ConnectionError about a 404 on ``.../xet-write-token/...``).
    Downloads never use Xet: the server never sends ``X-Xet-Hash``.
  * Pass ``endpoint=server.url`` to every call (``HF_ENDPOINT`` is read only when huggingface_hub is
    imported). Do not monkeypatch ``constants.ENDPOINT`` alone: ``hf_hub_url`` keeps building
    https://huggingface.co URLs from a template computed at import.
  * Pass ``token=`` explicitly (or ``token=False``) so that no real token of the machine is used, and set
    ``constants.HF_HUB_DISABLE_TELEMETRY = True``: otherwise the first request fetches the agent registry
    from ``constants.ENDPOINT``/api/agent-harnesses, i.e. huggingface.co unless HF_ENDPOINT was set.
  * Offline mode (``constants.HF_HUB_OFFLINE``, from HF_HUB_OFFLINE at import) blocks every request,
    127.0.0.1 included: a client process talking to this server must not have it on.

Store layout under ``root``: ``blobs/<oid>`` (content-addressed: git blob sha1 for regular files, sha256
for LFS files), ``repos/<type>s/<repo_id>/repo.json`` (settings and refs: ``refs/heads/*``,
``refs/tags/*``, ``refs/pr/*``), ``repos/.../commits/<sha>.json`` (parents and the full file map), and
``state.json`` (users, redirects). A server restarted on the same root keeps its repos.

By hand: ``python tests/hub_server.py --root DIR [--port N] [--user NAME --token TOKEN]``.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import re
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

# Mirrors the Hub's default .gitattributes (plus images); anything above 10 MB is LFS as well.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy "
    "*.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* "
    "*.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.gguf *.png *.jpg *.jpeg"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_THRESHOLD = 10 * 1024 * 1024
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_SEGMENT = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Drop:
    """A fault: close the connection without an answer or, with ``after_bytes``, after sending the
    headers and that many bytes of the body (a connection lost in the middle of a download)."""

    after_bytes: int | None = None


@dataclass(frozen=True)
class Delay:
    """A fault: wait ``seconds`` before handling the request (a slow server), then answer normally."""

    seconds: float


# A fault rule gets (method, path) and returns None to let the request through, a status code (or a
# (status, headers) pair) to answer instead, a Drop or a Delay,
# e.g. `lambda m, p: 503 if "/resolve/" in p else None`. `first(n, rule)` makes a fault transient.
Fault = "int | tuple[int, dict] | Drop | Delay"
FaultRule = Callable[[str, str], "Fault | None"]


def first(count: int, rule: FaultRule) -> FaultRule:
    """A rule that injects ``rule``'s fault into the first ``count`` requests it matches, then none."""
    fired = [0]
    lock = threading.Lock()

    def transient(method: str, path: str):
        with lock:
            if fired[0] >= count:
                return None
            fault = rule(method, path)
            if fault is not None:
                fired[0] += 1
            return fault

    return transient


class HubError(Exception):
    """An HTTP error reply. ``code`` goes into X-Error-Code: over http:// the client maps errors by it."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers, self.body = headers or {}, body


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _write(path: Path, data: bytes) -> None:
    # Write then rename, so that a concurrent reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _is_lfs(path: str, size: int, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    # gitattributes semantics: a pattern without "/" matches the file name at any depth.
    return size > LFS_THRESHOLD or any(fnmatch.fnmatchcase(path if "/" in p else name, p) for p in patterns)


def _front_matter(text: str) -> dict:
    """The YAML metadata block of a model card, for the flat subset cards use here (``key: value`` and
    ``key:`` followed by ``- item`` lines); the standard library has no YAML parser."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    data: dict = {}
    key = None
    for line in lines[1:]:
        if line.strip() == "---":
            return data
        if line.lstrip().startswith("- ") and key is not None:
            data.setdefault(key, [])
            if isinstance(data[key], list):
                data[key].append(line.strip()[2:].strip().strip("'\""))
        elif ":" in line and not line.startswith(" "):
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip().strip("'\"")
            data[key] = value if value else []
    return {}


def _file_json(path: str, entry: dict) -> dict:
    """A file as the tree endpoint lists it."""
    out = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
    if entry["lfs"]:
        pointer = lfs_pointer(entry["oid"], entry["size"])
        # The Hub's oid of an LFS file is the git sha1 of its pointer file; the sha256 goes under "lfs".
        out["oid"] = git_sha1(pointer)
        out["lfs"] = {"oid": entry["oid"], "size": entry["size"], "pointerSize": len(pointer)}
    return out


class HubServer:
    """Hub-compatible HTTP server on ``host:port`` (port 0: ephemeral), storing everything under ``root``."""

    def __init__(self, root: Path | str, *, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.faults: list[FaultRule] = []  # tests append rules to inject failures
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.verbose = False  # log requests to stderr (the CLI turns it on)
        self.lock = threading.RLock()  # one writer at a time keeps refs and commits consistent
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        # A short poll interval keeps stop() fast.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextmanager
    def injected(self, *rules: FaultRule) -> Iterator[None]:
        """Inject the faults of ``rules`` for the duration of a ``with`` block."""
        self.faults.extend(rules)
        try:
            yield
        finally:
            for rule in rules:
                self.faults.remove(rule)

    # ---------------------------------------------------------------- seeding helpers (no HTTP)
    def add_user(self, name: str, token: str, *, orgs=()) -> None:
        with self.lock:
            state = self._state()
            state["users"][name] = {"token": token, "orgs": list(orgs)}
            _write(self.root / "state.json", json.dumps(state, indent=1).encode())

    def create_repo(
        self,
        repo_id: str,
        *,
        repo_type: str = "model",
        private: bool = False,
        gated: bool = False,
        owner_token: str | None = None,
        sdk: str | None = None,
    ) -> str:
        """Create a repo whose initial commit holds ``.gitattributes``, like the Hub; return that commit.

        With ``owner_token``, refuse (PermissionError) unless that user may write to the namespace.
        ``sdk``: a Space's (gradio, docker, static), reported back by ``space_info`` as the Hub does.
        """
        with self.lock:
            if owner_token is not None and not self._can_write(self._user_for(owner_token), repo_id):
                raise PermissionError(f"that token may not create repos under {repo_id.split('/')[0]}")
            if self._meta(repo_type, repo_id) is not None:
                raise FileExistsError(f"{repo_type} repo {repo_id} already exists")
            gate = "manual" if gated else False  # what the Hub reports for gated repos
            meta = {"private": private, "gated": gate, "granted": [], "created": _now(), "refs": {}}
            if repo_type == "space":
                meta["sdk"] = sdk
            self._save_meta(repo_type, repo_id, meta)
            files = {".gitattributes": self._put_blob(GITATTRIBUTES, lfs=False)}
            return self._commit(repo_type, repo_id, "refs/heads/main", None, files, "initial commit", "")

    def commit_files(
        self,
        repo_id: str,
        files: dict[str, bytes | None],
        *,
        revision: str = "main",
        message: str = "Upload files",
        repo_type: str = "model",
    ) -> str:
        """Commit ``files`` (path -> content, None deletes) to a branch, LFS or not as the Hub would."""
        with self.lock:
            meta = self._meta_or_404(repo_type, repo_id)
            ref = self._branch_ref(meta, revision)
            tree = dict(self._commit_at(repo_type, repo_id, meta, ref)["files"])
            patterns = self._lfs_patterns(files.get(".gitattributes") or tree.get(".gitattributes"))
            for path, content in files.items():
                if content is None:
                    tree.pop(path, None)
                else:
                    tree[path] = self._put_blob(content, lfs=_is_lfs(path, len(content), patterns))
            return self._commit(repo_type, repo_id, ref, meta["refs"][ref], tree, message, "")

    def create_branch(self, repo_id: str, branch: str, revision: str = "main", *, repo_type="model") -> None:
        self._add_ref(repo_type, repo_id, f"refs/heads/{branch}", revision)

    def create_tag(self, repo_id: str, tag: str, revision: str = "main", *, repo_type="model") -> None:
        self._add_ref(repo_type, repo_id, f"refs/tags/{tag}", revision)

    def grant_access(self, repo_id: str, user: str, *, repo_type: str = "model") -> None:
        with self.lock:
            meta = self._meta_or_404(repo_type, repo_id)
            meta["granted"] = sorted({*meta["granted"], user})
            self._save_meta(repo_type, repo_id, meta)

    def add_redirect(self, old_repo_id: str, new_repo_id: str, *, repo_type: str = "model") -> None:
        """Make ``old_repo_id`` an alias of ``new_repo_id``, like the Hub does for renamed repos."""
        self._check_repo_id(old_repo_id)
        with self.lock:
            state = self._state()
            state["redirects"][f"{repo_type}:{old_repo_id}"] = new_repo_id
            _write(self.root / "state.json", json.dumps(state, indent=1).encode())

    # ---------------------------------------------------------------- introspection helpers
    def list_repos(self, repo_type: str = "model") -> list[str]:
        base = self.root / "repos" / f"{repo_type}s"
        return sorted(p.parent.relative_to(base).as_posix() for p in base.glob("**/repo.json"))

    def refs(self, repo_id: str, *, repo_type: str = "model") -> dict[str, str]:
        return dict(self._meta_or_404(repo_type, repo_id)["refs"])

    def list_commits(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[dict]:
        """Commits reachable from ``revision``, newest first (id, parents, title, message, date, files...)."""
        commit = self._commit_at(repo_type, repo_id, self._meta_or_404(repo_type, repo_id), revision)
        out = [commit]
        while out[-1]["parents"]:
            out.append(self._load_commit(repo_type, repo_id, out[-1]["parents"][0]))
        return out

    def read_file(self, repo_id: str, path: str, revision: str = "main", *, repo_type="model") -> bytes:
        meta = self._meta_or_404(repo_type, repo_id)
        entry = self._commit_at(repo_type, repo_id, meta, revision)["files"].get(path)
        if entry is None:
            raise FileNotFoundError(f"{path} is not in {repo_id}@{revision}")
        return self._blob_path(entry["oid"]).read_bytes()

    # ---------------------------------------------------------------- storage internals
    def _state(self) -> dict:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"users": {}, "redirects": {}}

    def _user_for(self, token: str | None) -> dict | None:
        for name, user in self._state()["users"].items():
            if token is not None and user["token"] == token:
                return {"name": name, "orgs": user["orgs"]}
        return None

    @staticmethod
    def _check_repo_id(repo_id: str) -> None:
        # Repo ids become paths on disk: keep them tame.
        parts = repo_id.split("/")
        if len(parts) > 2 or not all(_SEGMENT.fullmatch(p) and ".." not in p for p in parts):
            raise HubError(400, "BadRequest", f"Invalid repo id {repo_id!r}")

    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        self._check_repo_id(repo_id)
        return self.root / "repos" / f"{repo_type}s" / repo_id

    def _meta(self, repo_type: str, repo_id: str) -> dict | None:
        path = self._repo_dir(repo_type, repo_id) / "repo.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _meta_or_404(self, repo_type: str, repo_id: str) -> dict:
        meta = self._meta(repo_type, repo_id)
        if meta is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return meta

    def _save_meta(self, repo_type: str, repo_id: str, meta: dict) -> None:
        _write(self._repo_dir(repo_type, repo_id) / "repo.json", json.dumps(meta, indent=1).encode())

    def _blob_path(self, oid: str) -> Path:
        return self.root / "blobs" / oid

    def _put_blob(self, data: bytes, *, lfs: bool) -> dict:
        oid = hashlib.sha256(data).hexdigest() if lfs else git_sha1(data)
        if not self._blob_path(oid).exists():
            _write(self._blob_path(oid), data)
        return {"oid": oid, "size": len(data), "lfs": lfs}

    def _load_commit(self, repo_type: str, repo_id: str, sha: str) -> dict:
        return json.loads((self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json").read_text())

    def _commit_at(self, repo_type: str, repo_id: str, meta: dict, rev: str) -> dict:
        """The commit a branch, tag, full ref name or full sha points at (else 404 RevisionNotFound)."""
        for name in (rev, f"refs/heads/{rev}", f"refs/tags/{rev}"):
            if name.startswith("refs/") and name in meta["refs"]:
                return self._load_commit(repo_type, repo_id, meta["refs"][name])
        if re.fullmatch(r"[0-9a-f]{40}", rev):
            try:
                return self._load_commit(repo_type, repo_id, rev)
            except FileNotFoundError:
                pass
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _commit(self, repo_type, repo_id, ref, parent, files, title, message, author=None) -> str:
        """Write a commit holding the full file map ``files`` and point ``ref`` at it."""
        body = {"parents": [parent] if parent else [], "title": title, "message": message}
        body.update(date=_now(), author=author or repo_id.split("/")[0], files=files)
        sha = hashlib.sha1(json.dumps([body, time.time_ns(), repo_id]).encode()).hexdigest()
        path = self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
        _write(path, json.dumps({"id": sha, **body}, indent=1).encode())
        meta = self._meta(repo_type, repo_id)
        meta["refs"][ref] = sha
        self._save_meta(repo_type, repo_id, meta)
        return sha

    def _add_ref(self, repo_type: str, repo_id: str, ref: str, revision: str) -> None:
        with self.lock:
            meta = self._meta_or_404(repo_type, repo_id)
            if ref in meta["refs"]:
                raise HubError(409, "RefExists", f"{ref} already exists")
            meta["refs"][ref] = self._commit_at(repo_type, repo_id, meta, revision)["id"]
            self._save_meta(repo_type, repo_id, meta)

    @staticmethod
    def _branch_ref(meta: dict, rev: str) -> str:
        # Commits go to branches and PR refs only: tags and shas do not move.
        for name in (f"refs/heads/{rev}", rev):
            if name in meta["refs"] and not name.startswith("refs/tags/"):
                return name
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _lfs_patterns(self, attrs: bytes | dict | None) -> list[str]:
        """LFS patterns of a .gitattributes (its content, or its entry in a file map)."""
        if isinstance(attrs, dict):
            attrs = self._blob_path(attrs["oid"]).read_bytes()
        if attrs is None:
            return list(LFS_PATTERNS)
        lines = (line.split() for line in attrs.decode(errors="replace").splitlines())
        return [words[0] for words in lines if "filter=lfs" in words[1:]]

    # ---------------------------------------------------------------- access control
    @staticmethod
    def _can_write(user: dict | None, repo_id: str) -> bool:
        return user is not None and repo_id.split("/")[0] in (user["name"], *user["orgs"])

    def _access(self, repo_type, repo_id, user, *, download=False, write=False, pr=False) -> dict:
        """Return the repo's meta, or raise the error the Hub would answer this user."""
        meta = self._meta_or_404(repo_type, repo_id)
        member = self._can_write(user, repo_id)
        if meta["private"] and not member:
            # The Hub hides private repos: 401 for anonymous callers, 404 for other users.
            raise HubError(401 if user is None else 404, "RepoNotFound", f"Repository {repo_id} not found")
        if write and user is None:
            raise HubError(401, "Unauthorized", "You must be authenticated to write")
        if write and not member and not pr:  # anyone who can read may open a pull request
            raise HubError(403, "Forbidden", f"You don't have the rights to write to {repo_id}")
        granted = member or (user is not None and user["name"] in meta["granted"])
        if download and meta["gated"] and not granted:
            raise HubError(401 if user is None else 403, "GatedRepo", f"Access to {repo_id} is restricted")
        return meta


class _Cut(Exception):
    """Raised inside a handler once a Drop(after_bytes) has let its bytes through."""


class _CutStream:
    """Passes ``limit`` bytes to ``stream``, then refuses to write more."""

    def __init__(self, stream, limit: int):
        self._stream, self._left = stream, limit

    def write(self, data: bytes) -> int:
        if self._left <= 0:
            raise _Cut()
        self._stream.write(data[: self._left])
        self._left -= len(data)
        if self._left <= 0:
            self._stream.flush()
            raise _Cut()
        return len(data)

    def __getattr__(self, name: str):  # flush, closed, …: as the real stream
        return getattr(self._stream, name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects: every reply has a Content-Length
    timeout = 30  # idle keep-alive connections do not hold threads forever
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms delayed-ACK stalls
    hub: HubServer

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, fmt, *args):  # quiet in tests
        if self.hub.verbose:
            super().log_message(fmt, *args)

    # ---------------------------------------------------------------- plumbing
    def _dispatch(self) -> None:
        method = self.method = self.command
        self._body_read, self.user, self._cut_after = False, None, None
        split = urlsplit(self.path)
        self.hub.requests.append((method, split.path))
        try:
            for rule in list(self.hub.faults):
                fault = rule(method, split.path)
                if isinstance(fault, Delay):
                    time.sleep(fault.seconds)
                elif isinstance(fault, Drop) and fault.after_bytes is None:
                    self.close_connection = True  # no answer at all: the client sees the connection close
                    return
                elif isinstance(fault, Drop):
                    self._cut_after = fault.after_bytes
                elif fault is not None:
                    status, headers = fault if isinstance(fault, tuple) else (fault, {})
                    raise HubError(status, "InjectedFault", "Injected fault", headers)
            # Revisions arrive as one %-encoded segment (refs%2Fpr%2F1): split first, then decode.
            parts = [unquote(p) for p in split.path.split("/") if p]
            self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer ") and parts[:1] != ["_lfs"]:
                self.user = self.hub._user_for(auth[7:].strip())
                if self.user is None:  # the Hub rejects unknown tokens everywhere, not only on whoami
                    raise HubError(401, "Unauthorized", "Invalid credentials in Authorization header")
            self._route(method, parts)
        except HubError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError, _Cut):
            self.close_connection = True  # the client gave up (a timeout test) or a Drop cut the reply
        except Exception as e:  # a bug in this test tool: say so rather than hang the client
            traceback.print_exc()
            self._error(HubError(500, "InternalError", f"{type(e).__name__}: {e}"))

    def _body(self) -> bytes:
        self._body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self):
        try:
            return json.loads(self._body() or b"{}")
        except ValueError as e:
            raise HubError(400, "BadRequest", f"Invalid JSON: {e}") from None

    def _headers(self, status: int, length: int, headers: dict, ctype="application/json") -> None:
        if not self._body_read and self.method in ("POST", "PUT"):
            self._body()  # drain, or the next request on this keep-alive connection reads garbage
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.end_headers()

    def end_headers(self) -> None:
        super().end_headers()
        if self._cut_after is not None:  # a Drop(after_bytes): let that much of the body through, then hang up
            self.wfile = _CutStream(self.wfile, self._cut_after)

    def _json(self, obj, status: int = 200, headers: dict | None = None, ctype="application/json") -> None:
        body = json.dumps(obj).encode()
        self._headers(status, len(body), headers or {}, ctype)
        if self.method != "HEAD":
            self.wfile.write(body)

    def _error(self, e: HubError) -> None:
        headers = {"X-Error-Code": e.code, "X-Error-Message": e.message, **e.headers}
        self._json({"error": e.message, **e.body}, e.status, headers)

    def _repo(self, parts: list[str], repo_type: str) -> tuple[str, list[str]]:
        """Split ``ns/name/rest...`` (or a one-segment id such as ``gpt2``) into (repo_id, rest)."""
        first = parts[0] if parts else ""
        if f"{repo_type}:{first}" in self.hub._state()["redirects"] or (
            _SEGMENT.fullmatch(first) and self.hub._meta(repo_type, first) is not None
        ):
            return first, parts[1:]
        if len(parts) < 2:
            raise HubError(404, "RepoNotFound", "Repository not found")
        return "/".join(parts[:2]), parts[2:]

    def _canonical(self, repo_type: str, repo_id: str) -> str:
        return self.hub._state()["redirects"].get(f"{repo_type}:{repo_id}", repo_id)

    # ---------------------------------------------------------------- routes
    def _route(self, method: str, parts: list[str]) -> None:
        api = parts[1:] if parts[:1] == ["api"] else None
        if api == ["whoami-v2"] and method == "GET":
            return self._whoami()
        if api == ["agent-harnesses"] and method == "GET":
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if api == ["validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if api == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if api == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if api and api[0] in API_TYPES:
            repo_type = API_TYPES[api[0]]
            repo_id, rest = self._repo(api[1:], repo_type)
            return self._repo_api(method, repo_type, self._canonical(repo_type, repo_id), rest)
        if parts[:1] == ["_lfs"] and len(parts) >= 2:
            return self._lfs_put(parts[1]) if method == "PUT" else self._lfs_verify(parts[1])
        if parts and api is None:  # /{datasets/|spaces/}{repo_id}/...
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(parts[0], "model")
            repo_id, rest = self._repo(parts[1:] if repo_type != "model" else parts, repo_type)
            if repo_id.endswith(".git") and rest == ["info", "lfs", "objects", "batch"] and method == "POST":
                return self._lfs_batch(repo_type, self._canonical(repo_type, repo_id[:-4]))
            if rest[:1] == ["resolve"] and len(rest) >= 3 and method in ("GET", "HEAD"):
                return self._resolve_file(repo_type, repo_id, rest[1], "/".join(rest[2:]))
        raise HubError(404, "NotFound", f"No route for {method} {self.path}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> None:
        hub, action, arg = self.hub, rest[0] if rest else None, "/".join(rest[1:])
        if method == "GET" and action in (None, "revision"):
            meta = hub._access(repo_type, repo_id, self.user)
            return self._info(repo_type, repo_id, meta, hub._commit_at(repo_type, repo_id, meta, arg or "main"))
        if method == "GET" and action == "tree" and arg:
            commit = hub._commit_at(repo_type, repo_id, hub._access(repo_type, repo_id, self.user), rest[1])
            return self._tree(commit, "/".join(rest[2:]).strip("/"))
        if method == "GET" and action == "refs":
            refs = sorted(hub._access(repo_type, repo_id, self.user)["refs"].items())
            out = {"converts": []}
            kinds = {"branches": "refs/heads/", "tags": "refs/tags/", "pullRequests": "refs/pr/"}
            for key, prefix in kinds.items():
                out[key] = [
                    {"name": r.removeprefix(prefix), "ref": r, "targetCommit": sha}
                    for r, sha in refs
                    if r.startswith(prefix)
                ]
            return self._json(out)
        if method == "GET" and action == "commits" and arg:
            hub._access(repo_type, repo_id, self.user)
            commits = hub.list_commits(repo_id, arg, repo_type=repo_type)
            keys = ("id", "title", "message", "date")
            return self._json([{**{k: c[k] for k in keys}, "authors": [{"user": c["author"]}]} for c in commits])
        if method == "POST" and action == "paths-info" and arg:
            meta = hub._access(repo_type, repo_id, self.user)
            files = hub._commit_at(repo_type, repo_id, meta, arg)["files"]
            paths = parse_qs(self._body().decode()).get("paths", [])  # sent as form data
            return self._json([_file_json(p, files[p]) for p in paths if p in files])
        if method == "POST" and action == "preupload" and arg:
            return self._preupload(repo_type, repo_id, arg)
        if method == "POST" and action == "commit" and arg:
            return self._create_commit(repo_type, repo_id, arg)
        if method == "POST" and action in ("branch", "tag") and arg:
            hub._access(repo_type, repo_id, self.user, write=True)
            body = self._json_body()
            if action == "branch":
                hub.create_branch(repo_id, arg, body.get("startingPoint") or "main", repo_type=repo_type)
            else:
                hub.create_tag(repo_id, body["tag"], arg, repo_type=repo_type)
            return self._json({})
        raise HubError(404, "NotFound", f"No route for {method} {self.path}")

    def _whoami(self) -> None:
        if self.user is None:
            raise HubError(401, "Unauthorized", "Invalid credentials in Authorization header")
        name, orgs = self.user["name"], [{"name": o, "type": "org"} for o in self.user["orgs"]]
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        avatar = f"{self.hub.url}/avatars/{name}.svg"  # Gradio's local sign-in mock reads it
        self._json({"type": "user", "name": name, "fullname": name, "avatarUrl": avatar, "orgs": orgs, "auth": auth})

    def _create_repo(self) -> None:
        body = self._json_body()
        if self.user is None:
            raise HubError(401, "Unauthorized", "You must be authenticated to create a repo")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.user['name']}/{body.get('name')}"
        self.hub._check_repo_id(repo_id)
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if not self.hub._can_write(self.user, repo_id):
            raise HubError(403, "Forbidden", f"You don't have the rights to create repos under {repo_id}")
        private = body.get("visibility", "private" if body.get("private") else "public") == "private"
        with self.hub.lock:
            if self.hub._meta(repo_type, repo_id) is not None:
                # The client reads "url" from this 409 even with exist_ok=True.
                raise HubError(409, "RepoExists", f"You already created this {repo_type} repo", url=url)
            # a Space's sdk comes as "sdk" in the body (create_repo(space_sdk=...)); the Hub requires one
            if repo_type == "space" and body.get("sdk") not in ("gradio", "docker", "static"):
                raise HubError(400, "BadRequest", "Invalid or missing sdk for a Space: gradio, docker or static")
            self.hub.create_repo(repo_id, repo_type=repo_type, private=private, sdk=body.get("sdk"))
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        body = self._json_body()
        if self.user is None:
            raise HubError(401, "Unauthorized", "You must be authenticated to delete a repo")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.user['name']}/{body.get('name')}"
        if not self.hub._can_write(self.user, repo_id):
            raise HubError(403, "Forbidden", f"You don't have the rights to delete {repo_id}")
        with self.hub.lock:
            if self.hub._meta(repo_type, repo_id) is None:
                raise HubError(404, "RepoNotFound", "Repository not found")
            shutil.rmtree(self.hub._repo_dir(repo_type, repo_id))
        self._json({})

    def _info(self, repo_type: str, repo_id: str, meta: dict, commit: dict) -> None:
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            siblings.append({"rfilename": path})
            if self.query.get("blobs") in ("True", "true", "1"):
                f = _file_json(path, entry)
                siblings[-1].update(size=f["size"], blobId=f["oid"])
                if "lfs" in f:  # same data as in the tree, but the sha256 is called "sha256" here
                    siblings[-1]["lfs"] = {"sha256": entry["oid"], "size": entry["size"]}
                    siblings[-1]["lfs"]["pointerSize"] = f["lfs"]["pointerSize"]
        rid = hashlib.sha1(f"{repo_type}:{repo_id}".encode()).hexdigest()[:24]
        info = {"_id": rid, "id": repo_id, "author": repo_id.split("/")[0], "sha": commit["id"]}
        info.update(lastModified=commit["date"], createdAt=meta["created"], private=meta["private"])
        info.update(gated=meta["gated"], disabled=False, downloads=0, likes=0, tags=[], siblings=siblings)
        # Like the Hub: the model card's metadata, and the part of config.json it shows (quantization included).
        files = commit["files"]
        if "README.md" in files:
            card = _front_matter(self.hub._blob_path(files["README.md"]["oid"]).read_text(encoding="utf-8"))
            if card:
                info["cardData"] = card
        if "config.json" in files:
            config = json.loads(self.hub._blob_path(files["config.json"]["oid"]).read_text(encoding="utf-8"))
            shown = ("architectures", "model_type", "quantization_config")
            info["config"] = {k: config[k] for k in shown if isinstance(config, dict) and k in config}
        if repo_type == "space":  # space_info's sdk; no runtime: this server never builds a Space
            info["sdk"] = meta.get("sdk")
        self._json(info)

    def _tree(self, commit: dict, prefix: str) -> None:
        recursive = self.query.get("recursive") in ("True", "true", "1")
        entries: dict[str, dict] = {}
        for path, entry in sorted(commit["files"].items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            segments = path[len(prefix) + 1 if prefix else 0 :].split("/")
            for depth in range(1, len(segments) if recursive else min(2, len(segments))):
                folder = "/".join(filter(None, [prefix, *segments[:depth]]))
                oid = hashlib.sha1(f"{commit['id']}:{folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0, "oid": oid})
            if recursive or len(segments) == 1:
                entries[path] = _file_json(path, entry)
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist", {"X-Repo-Commit": commit["id"]})
        self._json(list(entries.values()))

    def _resolve_file(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        canonical = self._canonical(repo_type, repo_id)
        if canonical != repo_id:  # renamed repo: the Hub redirects file URLs, and the client follows
            location = f"/{URL_PREFIX[repo_type]}{canonical}/resolve/{quote(rev, safe='')}/{quote(path)}"
            return self._json({}, 307, {"Location": location})
        meta = self.hub._access(repo_type, repo_id, self.user, download=True)
        commit = self.hub._commit_at(repo_type, repo_id, meta, rev)
        entry, sha = commit["files"].get(path), commit["id"]
        if entry is None:  # X-Repo-Commit lets the client cache the absence of the file
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {rev}", {"X-Repo-Commit": sha})
        size = entry["size"]
        # ETag: git sha1 for regular files, sha256 for LFS ones (which also get the X-Linked-* pair).
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["oid"]}"', "X-Linked-Size": size})
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and self.method == "GET" and (match[1] or match[2]):
            if match[1]:
                start, end = int(match[1]), min(int(match[2] or size - 1), size - 1)
            else:
                start = max(0, size - int(match[2]))
            if start > end:
                headers["Content-Range"] = f"bytes */{size}"
                raise HubError(416, "RangeNotSatisfiable", "Range not satisfiable", headers)
            status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{size}"
        self._headers(status, end - start + 1, headers, "application/octet-stream")
        if self.method == "GET":
            with open(self.hub._blob_path(entry["oid"]), "rb") as f:
                f.seek(start)
                remaining = end - start + 1
                while remaining > 0 and (chunk := f.read(min(remaining, 1 << 20))):
                    self.wfile.write(chunk)
                    remaining -= len(chunk)

    # ---------------------------------------------------------------- uploads
    def _preupload(self, repo_type: str, repo_id: str, rev: str) -> None:
        hub, body = self.hub, self._json_body()
        meta = hub._access(repo_type, repo_id, self.user, write=True, pr=bool(self.query.get("create_pr")))
        files = hub._commit_at(repo_type, repo_id, meta, rev)["files"]
        patterns, out = hub._lfs_patterns(files.get(".gitattributes")), []
        for f in body.get("files", []):
            mode = "lfs" if _is_lfs(f["path"], f["size"], patterns) else "regular"
            existing = files.get(f["path"])
            # The client compares this oid with its own (sha256 for LFS, git sha1 otherwise) and skips
            # unchanged files; if nothing changed it makes no commit at all.
            oid = existing["oid"] if existing and existing["lfs"] == (mode == "lfs") else None
            out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": out})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        body = self._json_body()
        self.hub._access(repo_type, repo_id, self.user)
        if self.user is None:
            raise HubError(401, "Unauthorized", "You must be authenticated to upload")
        objects = []
        for obj in body.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"]}
            if not _SHA256.fullmatch(obj["oid"]):
                item["error"] = {"code": 422, "message": "invalid oid"}
            elif not self.hub._blob_path(obj["oid"]).exists():  # stored ones get no actions: no upload
                href = f"{self.hub.url}/_lfs/{obj['oid']}"
                item["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str) -> None:
        if not _SHA256.fullmatch(oid):
            raise HubError(400, "BadRequest", "invalid oid")
        # Stream to disk while hashing: LFS files can be large.
        path = self.hub._blob_path(oid)
        tmp = path.with_name(f".{oid}.{threading.get_ident()}.upload")
        digest, chunked = hashlib.sha256(), self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        length = int(self.headers.get("Content-Length") or 0)
        with open(tmp, "wb") as f:
            for chunk in [self._body()] if chunked else self._chunks(length):
                digest.update(chunk)
                f.write(chunk)
        self._body_read = True
        if digest.hexdigest() != oid:
            tmp.unlink()
            raise HubError(400, "BadRequest", "sha256 of the body does not match the oid")
        os.replace(tmp, path)
        self._json({})

    def _chunks(self, remaining: int):
        while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 20))):
            remaining -= len(chunk)
            yield chunk

    def _lfs_verify(self, oid: str) -> None:
        body = self._json_body()
        path = self.hub._blob_path(oid)
        if not _SHA256.fullmatch(oid) or not path.exists() or path.stat().st_size != body.get("size"):
            raise HubError(404, "LfsObjectNotFound", f"LFS object {oid} not found")
        self._json({"success": True})

    def _create_commit(self, repo_type: str, repo_id: str, rev: str) -> None:
        hub, create_pr = self.hub, bool(self.query.get("create_pr"))
        try:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        except ValueError as e:
            raise HubError(400, "BadRequest", f"Invalid NDJSON: {e}") from None
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        with hub.lock:
            pr = create_pr or rev.startswith("refs/pr/")
            meta = hub._access(repo_type, repo_id, self.user, write=True, pr=pr)
            if create_pr:  # a new refs/pr/N, starting from parentCommit if given
                base = hub._commit_at(repo_type, repo_id, meta, header.get("parentCommit") or rev)["id"]
                numbers = [int(r.rsplit("/", 1)[1]) for r in meta["refs"] if r.startswith("refs/pr/")]
                ref = f"refs/pr/{max(numbers, default=0) + 1}"
            else:
                ref = hub._branch_ref(meta, rev)
                base = meta["refs"][ref]
                if not base.startswith(header.get("parentCommit") or ""):
                    raise HubError(412, "PreconditionFailed", "A commit has happened since. Please refresh.")
            tree = dict(hub._load_commit(repo_type, repo_id, base)["files"])
            for item in lines:
                key, value = item["key"], item["value"]
                path = value.get("path", "").strip("/")
                if key != "header" and (not path or ".." in path.split("/")):
                    raise HubError(400, "BadRequest", f"Invalid path {value.get('path')!r}")
                if key == "file":
                    tree[path] = hub._put_blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    blob = hub._blob_path(value["oid"])
                    if not _SHA256.fullmatch(value["oid"]) or not blob.exists():
                        raise HubError(422, "LfsObjectNotFound", f"LFS object {value['oid']} never uploaded")
                    tree[path] = {"oid": value["oid"], "size": blob.stat().st_size, "lfs": True}
                elif key == "deletedFile" and tree.pop(path, None) is None:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                elif key == "deletedFolder":
                    tree = {p: e for p, e in tree.items() if not p.startswith(path + "/")}
                elif key not in ("header", "file", "lfsFile", "deletedFile"):
                    raise HubError(400, "BadRequest", f"Unsupported commit operation {key!r}")
            summary, description = header.get("summary", ""), header.get("description", "")
            sha = hub._commit(repo_type, repo_id, ref, base, tree, summary, description, self.user["name"])
        prefix = f"{hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        pr_url = f"{prefix}/discussions/{ref.rsplit('/', 1)[1]}" if create_pr else None
        self._json({"commitOid": sha, "commitUrl": f"{prefix}/commit/{sha}", "pullRequestUrl": pr_url})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a local Hugging Face Hub look-alike.")
    parser.add_argument("--root", required=True, type=Path, help="directory holding the store")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--user", help="create (or update) this user...")
    parser.add_argument("--token", help="...with this token (default: hf_<user>)")
    args = parser.parse_args(argv)
    server = HubServer(args.root, port=args.port)
    server.verbose = True
    if args.user:
        server.add_user(args.user, args.token or f"hf_{args.user}")
    with server:
        print(server.url, flush=True)
        print(f"  HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

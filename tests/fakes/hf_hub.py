"""A fake Hugging Face Hub on 127.0.0.1: real files, the endpoints and headers huggingface_hub uses.

``python -m tests.fakes.hf_hub --port N --root DIR`` serves every folder ``DIR/ORG/REPO`` as the
model repo ``ORG/REPO`` (read on each request, so a test may add repos while it runs):

- ``GET /api/models/{repo}[/revision/{rev}]``: the repo's info (``sha``, ``siblings`` with sizes);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: the file, with ``ETag`` (its sha256),
  ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges`` and ``Range`` requests (206);
- errors as the Hub sends them: 404 with ``X-Error-Code`` RepoNotFound / EntryNotFound /
  RevisionNotFound; a repo listed in ``DIR/gated.txt`` answers its files with 401 ``GatedRepo``
  unless the request carries ``Authorization: Bearer <the token in DIR/token.txt>``.

Faults, set by the test with ``POST /_faults`` (JSON, replaces the previous set):
``{"drop": {"file": NAME, "after": BYTES, "times": N}}`` closes the connection after BYTES of a
GET of NAME (the first N times), ``{"rate": BYTES_PER_S}`` slows every GET to that rate.
Every request is recorded (method, path, Range, whether it had a token): ``GET /_requests``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.base import make_app, record, serve_main

ROOT = web.AppKey("root", Path)
FAULTS = web.AppKey("faults", dict[str, Any])
CHUNK = 16 * 1024


def _repo_dir(request: web.Request, repo: str) -> Path | None:
    root = request.app[ROOT]
    folder = (root / repo).resolve()
    if root.resolve() not in folder.parents or not folder.is_dir() or repo.count("/") != 1:
        return None
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _commit(folder: Path) -> str:
    """A stable 40-hex commit id for the repo's current content."""
    digest = hashlib.sha1()
    for path in _files(folder):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers={"X-Error-Code": code, "X-Error-Message": message})


def _gated(request: web.Request, repo: str) -> bool:
    root = request.app[ROOT]
    gated_file = root / "gated.txt"
    gated = gated_file.read_text().split() if gated_file.is_file() else []
    if repo not in gated:
        return False
    token_file = root / "token.txt"
    token = token_file.read_text().strip() if token_file.is_file() else ""
    return not token or request.headers.get("Authorization", "") != f"Bearer {token}"


def _record(request: web.Request) -> None:
    entry = record(request, None)
    entry["method"] = request.method
    entry["range"] = request.headers.get("Range")
    entry["token"] = bool(request.headers.get("Authorization"))


async def model_info(request: web.Request) -> web.Response:
    _record(request)
    repo = request.match_info["repo"]
    folder = _repo_dir(request, repo)
    if folder is None:
        return _error(404, "RepoNotFound", f"Repository Not Found for url: {request.url}.")
    revision = request.match_info.get("rev", "main")
    commit = _commit(folder)
    if revision not in ("main", commit):
        return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
    siblings = []
    for path in _files(folder):
        sibling: dict[str, Any] = {"rfilename": str(path.relative_to(folder))}
        if request.query.get("blobs") in ("true", "True", "1"):
            sibling.update({"size": path.stat().st_size, "blobId": hashlib.sha1(path.read_bytes()).hexdigest()})
        siblings.append(sibling)
    gated = (request.app[ROOT] / "gated.txt").is_file() and repo in (request.app[ROOT] / "gated.txt").read_text().split()
    return web.json_response({"_id": commit[:24], "id": repo, "modelId": repo, "author": repo.split("/")[0],
                              "sha": commit, "private": False, "disabled": False, "gated": "manual" if gated else False,
                              "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                              "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"})


async def resolve(request: web.Request) -> web.StreamResponse:
    _record(request)
    repo = f"{request.match_info['org']}/{request.match_info['name']}"
    folder = _repo_dir(request, repo)
    if folder is None:
        return _error(404, "RepoNotFound", f"Repository Not Found for url: {request.url}.")
    commit = _commit(folder)
    if request.match_info["rev"] not in ("main", commit):
        return _error(404, "RevisionNotFound", f"Invalid rev id: {request.match_info['rev']}")
    if _gated(request, repo):
        return _error(401, "GatedRepo", f"Access to model {repo} is restricted. You must have access to it and "
                                        "be authenticated to access it. Please log in.")
    name = request.match_info["file"]
    path = (folder / name).resolve()
    if folder not in path.parents or not path.is_file():
        return _error(404, "EntryNotFound", f"Entry Not Found for url: {request.url}.")
    size = path.stat().st_size
    headers = {"ETag": f'"{_sha256(path)}"', "X-Repo-Commit": commit, "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    start = 0
    wanted = request.headers.get("Range", "")
    if wanted.startswith("bytes="):
        first, _, _last = wanted[6:].partition("-")
        start = int(first or 0)
        if start >= size:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    status = 206 if start else 200
    if start:
        headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
    headers["Content-Length"] = str(size - start)
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Length": str(size)})
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    faults = request.app[FAULTS]
    drop = faults.get("drop") or {}
    cut_at: int | None = None
    if drop.get("file") == name and int(drop.get("times", 1)) > 0:
        drop["times"] = int(drop.get("times", 1)) - 1
        cut_at = int(drop.get("after", 0))
    rate = float(faults.get("rate") or 0)
    sent = start
    with path.open("rb") as handle:
        handle.seek(start)
        while block := handle.read(CHUNK):
            if cut_at is not None and sent + len(block) > cut_at:
                await response.write(block[: max(0, cut_at - sent)])
                await asyncio.sleep(0.05)  # let the bytes leave before the connection goes
                assert request.transport is not None
                request.transport.abort()  # mid-body: the client sees a truncated response
                return response
            await response.write(block)
            sent += len(block)
            if rate:
                await asyncio.sleep(len(block) / rate)
    await response.write_eof()
    return response


async def set_faults(request: web.Request) -> web.Response:
    faults = request.app[FAULTS]
    faults.clear()
    faults.update(json.loads(await request.read() or b"{}"))
    return web.json_response({"ok": True, "faults": faults})


def build_app(root: Path) -> web.Application:
    app = make_app(
        web.get("/api/models/{repo:[^/]+/[^/]+}", model_info),
        web.get("/api/models/{repo:[^/]+/[^/]+}/revision/{rev}", model_info),
        web.route("HEAD", "/{org}/{name}/resolve/{rev}/{file:.+}", resolve),
        web.get("/{org}/{name}/resolve/{rev}/{file:.+}", resolve, allow_head=False),
        web.post("/_faults", set_faults),
        web.get("/_health", health),
    )
    app[ROOT] = root
    app[FAULTS] = {}
    return app


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def main() -> None:
    import sys

    argv = sys.argv[1:]
    root = Path(argv[argv.index("--root") + 1]) if "--root" in argv else Path.cwd()
    if "--root" in argv:  # serve_main parses --host/--port only
        index = argv.index("--root")
        sys.argv[1:] = argv[:index] + argv[index + 2:]
    serve_main(lambda: build_app(root), default_port=8765)


if __name__ == "__main__":
    main()

"""The web view: a Starlette app over `Library`, pages from Jinja2 templates, plain JS/CSS, no build step.

Routes (all GET; every request first passes security.Gate):
  /                                        devices: identity, versions, space, size chart
  /device/{key}                            timeline of snapshots; pick two to diff
  /device/{key}/photos?show=all|gone&page  camera roll across versions, newest first, grouped by day
  /device/{key}/photo/{content}            one photo/video: preview, versions holding it, download of the original
  /device/{key}/thumb/{content}            thumbnail (JPEG from the real bytes, or an icon); /preview/{content} larger
  /device/{key}/original/{content}         the original bytes, bit for bit, as an attachment
  /device/{key}/snap/{id}/files?path=      browse a snapshot by domain path
  /device/{key}/snap/{id}/file?path=       download one file; /zip?path= a folder as a zip, streamed
  /device/{key}/diff?s=A&s=B               what changed from A to B (the older one first)
  /find?q=&device=                         glob/substring over domain paths across every snapshot
  /api/devices, /api/device/{key}/photos   the same as JSON
Thumbnails are made lazily, at most THUMB_WORKERS at a time (decoding on their own pool, reading on the vault
thread), and cached sealed (thumbs.py). Phone bytes are never served inline: a page shows our own re-encoded JPEG,
originals and files only as attachments.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from phonevault.store.errors import (
    DeviceNotFound,
    MissingObject,
    PathNotFound,
    PhonevaultError,
    SnapshotNotFound,
)
from phonevault.store.repository import format_time
from phonevault.sync.errors import EncryptedBackup, WrongBackupPassword
from phonevault.sync.photos import MediaItem

from ..find_cmd import hit_json
from ..render import human
from . import thumbs
from .library import Library, VaultThread, day_of
from .security import WILDCARDS, Gate, allowed_hosts, cookie_name

HERE = Path(__file__).parent
PAGE = 120  # camera-roll items per page: more than a screen, few enough for the first screen to be quick
THUMB_WORKERS = 2  # decodes at once (the machine's cores); more requests wait their turn
FIND_LIMIT = 1000
DIFF_ROWS = 5000  # rows a diff page lists; the counts cover them all

_MIME = {
    "heic": "image/heic",
    "heif": "image/heif",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "mov": "video/quicktime",
    "mp4": "video/mp4",
    "m4v": "video/x-m4v",
}


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["human"] = human
    env.filters["when"] = lambda us: format_time(us) if us else "-"
    env.filters["day"] = day_of
    env.filters["q"] = lambda s: quote(s or "", safe="")
    env.filters["short"] = lambda h: (h or "")[:8]
    return env


class WebState:
    def __init__(self, library: Library) -> None:
        self.library = library
        self.vault = VaultThread()
        self.decoders = ThreadPoolExecutor(max_workers=THUMB_WORKERS, thread_name_prefix="phonevault-thumbs")
        self.thumb_slots: asyncio.Semaphore | None = None  # made on the server's event loop
        self.env = _env()
        self.env.globals["unlocking"] = library.password is not None  # serve was given the backup password

    def close(self) -> None:
        self.decoders.shutdown(wait=True, cancel_futures=True)
        self.vault.close()


def create_app(
    library: Library, *, token: str, host: str = "127.0.0.1", port: int = 8765, hosts=None, page_size: int = PAGE
) -> Starlette:
    """The app behind the gate. `hosts`: Host header values to answer (default: those of host:port)."""
    state = WebState(library)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        html = state.env.get_template(name).render(request=request, **ctx)
        return HTMLResponse(html, status_code=status)

    def slots() -> asyncio.Semaphore:
        if state.thumb_slots is None:
            state.thumb_slots = asyncio.Semaphore(THUMB_WORKERS * 2)
        return state.thumb_slots

    async def run(fn, *args, **kwargs):
        return await state.vault.run(fn, *args, **kwargs)

    # --- pages -----------------------------------------------------------------------------------------------
    async def devices(request: Request) -> Response:
        found = await run(state.library.devices)
        return page(request, "devices.html", devices=[_device_ctx(v, doc, rows) for v, doc, rows in found])

    async def timeline(request: Request) -> Response:
        view, doc, rows = await run(state.library.timeline, request.path_params["key"])
        return page(request, "timeline.html", device=_device_ctx(view, doc, rows), rows=rows, axis=_axis(rows))

    async def photos(request: Request) -> Response:
        key = request.path_params["key"]
        show = "gone" if request.query_params.get("show") == "gone" else "all"
        pageno = _int(request.query_params.get("page"), 0)
        view, roll = await run(state.library.roll, key, refresh=True)
        _v, doc, rows = await run(state.library.timeline, key)
        items = roll.gone() if show == "gone" else list(roll.items)
        chunk = items[pageno * page_size : (pageno + 1) * page_size]
        versions = {r.record.id: n for n, r in enumerate(rows, 1)}
        ctx = dict(
            device=_device_ctx(view, doc, rows),
            roll=roll,
            show=show,
            total=len(items),
            groups=_group(chunk),
            page=pageno,
            more=(pageno + 1) * page_size < len(items),
            versions=versions,
            nversions=len(rows),
            gone_count=len(roll.gone()),
        )
        if request.query_params.get("fragment") == "1":  # the next page, appended by app.js as one scrolls
            return page(request, "photos_grid.html", **ctx)
        return page(request, "photos.html", **ctx)

    async def photo(request: Request) -> Response:
        key, content = request.path_params["key"], request.path_params["content"]
        view, item = await run(state.library.media, key, content)
        _v, doc, rows = await run(state.library.timeline, key)
        holders = set(item.snapshots)
        return page(
            request,
            "photo.html",
            device=_device_ctx(view, doc, rows),
            item=item,
            folder=item.path.rpartition("/")[0],
            rows=[(n, r, r.record.id in holders) for n, r in enumerate(rows, 1)],
        )

    async def files(request: Request) -> Response:
        key, snap_id = request.path_params["key"], request.path_params["snap"]
        path = request.query_params.get("path", "").strip("/")
        view, snap, items, problems = await run(state.library.listing, key, snap_id, path)
        _v, doc, rows = await run(state.library.timeline, key)
        crumbs = []
        parts = path.split("/") if path else []
        for i, part in enumerate(parts):
            crumbs.append((part, "/".join(parts[: i + 1])))
        return page(
            request,
            "files.html",
            device=_device_ctx(view, doc, rows),
            snap=snap,
            snap_doc=next((r.doc for r in rows if r.record.id == snap.id), None),
            path=path,
            crumbs=crumbs,
            items=items,
            problems=problems,
        )

    async def diff(request: Request) -> Response:
        key = request.path_params["key"]
        picked = request.query_params.getlist("s")
        if len(picked) != 2:
            raise _BadRequest("pick exactly two snapshots to compare")
        _v, doc, rows = await run(state.library.timeline, key)
        order = {r.record.hex: (r.record.time, r.record.committed) for r in rows}
        a, b = sorted(picked, key=lambda h: order.get(h, (0, 0)))
        view, sa, sb, changes = await run(state.library.diff, key, a, b)
        counts = {k: sum(r.kind == k for r in changes) for k in ("added", "removed", "modified")}
        shown_rows = [r for r in changes if r.kind != "metadata"]
        return page(
            request,
            "diff.html",
            device=_device_ctx(view, doc, rows),
            a=sa,
            b=sb,
            changes=shown_rows[:DIFF_ROWS],
            cut=max(0, len(shown_rows) - DIFF_ROWS),
            counts=counts,
            metadata=sum(r.kind == "metadata" for r in changes),
        )

    async def find(request: Request) -> Response:
        q = request.query_params.get("q", "").strip()
        device = request.query_params.get("device") or None
        result, views = (None, {})
        if q:
            result, views = await run(state.library.find, q, device, FIND_LIMIT)
        if request.url.path.startswith("/api/"):
            return JSONResponse(_find_json(result, views) if result else {"hits": []})
        names = {k: (v.info.name or v.device or k[:12]) for k, v in views.items()}
        return page(request, "find.html", q=q, device=device, result=result, names=names, views=views)

    # --- bytes -----------------------------------------------------------------------------------------------
    async def thumb(request: Request) -> Response:
        return await _image(request, thumbs.THUMB_PX)

    async def preview(request: Request) -> Response:
        return await _image(request, thumbs.PREVIEW_PX)

    async def _image(request: Request, px: int) -> Response:
        key, content = request.path_params["key"], request.path_params["content"]
        _view, item = await run(state.library.media, key, content)  # 404 for anything not in this roll
        if item.encrypted:
            # Made from bytes only the backup password opens: never cached (the vault's key alone would show it),
            # and the browser is told not to keep it either.
            async with slots():
                made = await _render(key, item, px)
            if not made:
                return _icon(item)
            return Response(made, media_type="image/jpeg", headers={"cache-control": "no-store"})
        ck = thumbs.cache_key(item.content, px)
        made = await run(state.library.derived_get, ck)
        if made is None:
            async with slots():
                made = await run(state.library.derived_get, ck)  # made while this request waited
                if made is None:
                    made = await _render(key, item, px)
                    await run(state.library.derived_put, ck, made)
        if not made:
            return _icon(item)
        return Response(made, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"})

    async def _render(key: str, item: MediaItem, px: int) -> bytes:
        if item.kind != "photo":
            return b""
        data = await run(state.library.media_whole, key, item.key, thumbs.MAX_SOURCE_BYTES)
        if data is None:
            return b""
        out = await asyncio.get_running_loop().run_in_executor(state.decoders, thumbs.render, data, px)
        return out or b""

    def _icon(item: MediaItem) -> Response:
        name = "video.svg" if item.kind == "video" else "photo.svg"
        return Response(
            (HERE / "static" / name).read_bytes(),
            media_type="image/svg+xml",
            headers={"cache-control": "private, max-age=86400"},
        )

    async def original(request: Request) -> Response:
        key, content = request.path_params["key"], request.path_params["content"]
        _view, item = await run(state.library.media, key, content)
        body = state.vault.stream(lambda: state.library.media_bytes(key, content))
        return _attachment(body, item.name, item.size)

    async def file_download(request: Request) -> Response:
        key, snap_id = request.path_params["key"], request.path_params["snap"]
        path = request.query_params.get("path", "").strip("/")
        size = await run(state.library.file_size, key, snap_id, path)  # 404 (or 409) before the response starts
        body = state.vault.stream(lambda: state.library.file_bytes(key, snap_id, path))
        return _attachment(body, path.rsplit("/", 1)[-1], size)

    async def zip_download(request: Request) -> Response:
        key, snap_id = request.path_params["key"], request.path_params["snap"]
        path = request.query_params.get("path", "").strip("/")
        if not path:
            raise _BadRequest("name a domain or folder to zip")
        await run(state.library.zip_plan, key, snap_id, path)  # 404 before the response starts
        body = state.vault.stream(lambda: state.library.zip_stream(key, snap_id, path))
        name = path.rsplit("/", 1)[-1] + ".zip"
        return _attachment(body, name, None, "application/zip")

    # --- JSON ------------------------------------------------------------------------------------------------
    async def api_devices(request: Request) -> Response:
        found = await run(state.library.devices)
        return JSONResponse([dict(doc, key=v.key) for v, doc, _rows in found])

    async def api_photos(request: Request) -> Response:
        key = request.path_params["key"]
        _view, roll = await run(state.library.roll, key, refresh=True)
        items = roll.gone() if request.query_params.get("show") == "gone" else list(roll.items)
        offset = _int(request.query_params.get("offset"), 0)
        limit = min(_int(request.query_params.get("limit"), PAGE), 5000)
        return JSONResponse(
            {
                "total": len(items),
                "current_known": roll.current_known,
                "encrypted_snapshots": [s.hex for s in roll.encrypted],
                "items": [_item_json(i) for i in items[offset : offset + limit]],
            }
        )

    # --- errors: one line, as the CLI says it; JSON under /api/ ----------------------------------------------
    def error(request: Request, status: int, title: str, exc: Exception, **extra) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=status)
        return page(request, "error.html", status, title=title, message=str(exc), **extra)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(request, 404, "Not found", exc)

    async def encrypted(request: Request, exc: Exception) -> Response:
        # No backup password was given to serve (never one from a request): say how to give it.
        snap = getattr(exc, "snapshot", None) or "SNAPSHOT"
        why = PhonevaultError(
            f"snapshot {snap}: the phone encrypted this backup; browsing it needs its backup password: start "
            "phonevault serve with PHONEVAULT_BACKUP_PASSWORD or PHONEVAULT_BACKUP_PASSWORD_FILE set (or "
            f"--backup-password), or on the command line: phonevault ls {snap} --backup-password …"
        )
        return error(request, 409, "Encrypted by the phone", why, locked=True)

    async def wrong_password(request: Request, exc: Exception) -> Response:
        why = PhonevaultError(f"{exc}: the backup password phonevault serve was started with does not open it")
        return error(request, 409, "Encrypted by the phone", why, locked=True)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return error(request, 400, "Bad request", exc)

    async def failed(request: Request, exc: Exception) -> Response:
        return error(request, 500, "The vault could not be read", exc)

    routes = [
        Route("/", devices),
        Route("/find", find),
        Route("/api/find", find),
        Route("/api/devices", api_devices),
        Route("/api/device/{key:str}/photos", api_photos),
        Route("/device/{key:str}", timeline),
        Route("/device/{key:str}/photos", photos),
        Route("/device/{key:str}/photo/{content:str}", photo),
        Route("/device/{key:str}/thumb/{content:str}", thumb),
        Route("/device/{key:str}/preview/{content:str}", preview),
        Route("/device/{key:str}/original/{content:str}", original),
        Route("/device/{key:str}/diff", diff),
        Route("/device/{key:str}/snap/{snap:str}/files", files),
        Route("/device/{key:str}/snap/{snap:str}/file", file_download),
        Route("/device/{key:str}/snap/{snap:str}/zip", zip_download),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            DeviceNotFound: not_found,
            SnapshotNotFound: not_found,
            PathNotFound: not_found,
            MissingObject: not_found,
            EncryptedBackup: encrypted,
            WrongBackupPassword: wrong_password,
            _BadRequest: bad_request,
            PhonevaultError: failed,
        },
    )
    app.state.web = state
    return Gate(
        app,
        token=token,
        hosts=hosts or allowed_hosts(host, port),
        cookie=cookie_name(port),
        port=port,
        ip_literals=host in WILDCARDS,
    )


class _BadRequest(Exception):
    pass


def _int(text: str | None, default: int) -> int:
    try:
        return max(0, int(text)) if text is not None else default
    except ValueError:
        return default


def _attachment(body, name: str, size: int | None, media_type: str | None = None) -> StreamingResponse:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name) or "file"
    headers = {"content-disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"}
    if size is not None:
        headers["content-length"] = str(size)
    # A file from a phone is never rendered by the browser here: an attachment, sniffing off, and sandboxed.
    headers["content-security-policy"] = "sandbox; default-src 'none'"
    return StreamingResponse(body, media_type=media_type or _MIME.get(ext, "application/octet-stream"), headers=headers)


def _device_ctx(view, doc: dict, rows: list) -> dict:
    return {
        "key": view.key,
        "doc": doc,
        "title": doc.get("name") or doc.get("device") or view.key[:12],
        "versions": len(rows),
        "chart": _chart(rows),
        "current": next((r for r in rows if r.record.id == view.head), None),
    }


def _chart(rows: list) -> dict:
    """Bars of backup size and bytes added per version, scaled for an inline SVG 600 × 120."""
    if not rows:
        return {"bars": [], "width": 600, "height": 120}
    top = max(max(r.record.stats.size, r.record.stats.new_bytes) for r in rows) or 1
    step = 600 / len(rows)
    bars = []
    for n, r in enumerate(rows):
        h_size = 110 * r.record.stats.size / top
        h_new = 110 * r.record.stats.new_bytes / top
        bars.append(
            {
                "x": n * step + step * 0.1,
                "w": max(1.0, step * 0.38),
                "x2": n * step + step * 0.5,
                "h_size": h_size,
                "h_new": h_new,
                "label": f"v{n + 1} {r.doc['time']}: {human(r.record.stats.size)}, added {human(r.record.stats.new_bytes)}",
            }
        )
    return {"bars": bars, "width": 600, "height": 120}


def _axis(rows: list) -> list[dict]:
    """Each snapshot's place (0–100 %) on a time axis from the first to the last."""
    if not rows:
        return []
    lo, hi = rows[0].record.time, rows[-1].record.time
    span = (hi - lo) or 1
    return [{"pct": 2 + 96 * (r.record.time - lo) / span, "row": r, "n": n} for n, r in enumerate(rows, 1)]


def _group(items: list[MediaItem]) -> list[tuple[str, list[MediaItem]]]:
    groups: list[tuple[str, list[MediaItem]]] = []
    for item in items:
        day = day_of(item.taken)  # the capture date (EXIF, else mtime): an edited photo stays on its day
        if not groups or groups[-1][0] != day:
            groups.append((day, []))
        groups[-1][1].append(item)
    return groups


def _item_json(i: MediaItem) -> dict:
    return {
        "key": i.key,
        "path": i.path,
        "name": i.name,
        "kind": i.kind,
        "size": i.size,
        "taken": format_time(i.taken * 1_000_000) if i.taken > 0 else None,
        "day": day_of(i.taken),
        "modified": format_time(i.mtime * 1_000_000) if i.mtime > 0 else None,
        "snapshots": [s.hex() for s in i.snapshots],
        "in_current": i.in_current,
    }


def _find_json(result, views) -> dict:
    return {
        "searched": result.searched,
        "encrypted_snapshots": [s.hex for s in result.encrypted],
        "truncated": result.truncated,
        "hits": [hit_json(h, views[h.device_key]) for h in result.hits],
    }

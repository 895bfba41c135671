"""The web app's static files: hashed assets cached for a year, index.html never cached, SPA fallback."""

from __future__ import annotations

from pathlib import Path

import grpc
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from gateway.middleware import csp_allowing_style
from gateway.responses import HttpError

IMMUTABLE = "public, max-age=31536000, immutable"
# Paths that belong to the API: never answered with the web app.
API_PREFIXES = ("/v1/", "/healthz", "/readyz", "/openapi.json", "/docs")

NOT_BUILT_STYLE = "body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}"
NOT_BUILT_PAGE = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>PTIT Study Assistant</title>
<style>{NOT_BUILT_STYLE}</style></head>
<body><h1>PTIT Study Assistant</h1><p>The gateway is running, but the web app is not built.
Run <code>make web</code>, then reload this page.</p>
<p>The API is up: see <a href="/docs">/docs</a> and <a href="/openapi.json">/openapi.json</a>.</p></body></html>"""


class WebApp:
    def __init__(self, dist_dir: Path) -> None:
        self.dist_dir = dist_dir.resolve()

    def _file(self, url_path: str) -> Path | None:
        relative = url_path.lstrip("/")
        if not relative:
            return None
        candidate = (self.dist_dir / relative).resolve()
        # No escaping the dist directory with "..", symlinks or encoded separators.
        if not candidate.is_relative_to(self.dist_dir) or not candidate.is_file():
            return None
        return candidate

    async def serve(self, request: Request) -> Response:
        path = request.url.path
        if path.startswith(API_PREFIXES) or request.method not in ("GET", "HEAD"):
            raise HttpError(grpc.StatusCode.NOT_FOUND, f"no route for {request.method} {path}")
        index = self.dist_dir / "index.html"
        if not index.is_file():
            headers = {"Cache-Control": "no-cache", "Content-Security-Policy": csp_allowing_style(NOT_BUILT_STYLE)}
            return HTMLResponse(NOT_BUILT_PAGE, headers=headers)
        found = self._file(path)
        if found is not None and found != index:
            cache = IMMUTABLE if path.startswith("/assets/") else "public, max-age=3600"
            return FileResponse(found, headers={"Cache-Control": cache})
        if path.startswith("/assets/"):
            raise HttpError(grpc.StatusCode.NOT_FOUND, "no such asset")
        return FileResponse(index, headers={"Cache-Control": "no-cache"}, media_type="text/html")

"""The service's own pages, on the API's port: the demo at ``/demo`` and the API docs at ``/``.

Both are static files in serving/web/ (plain HTML, CSS and JavaScript, no build step) that call the same typed
API as any client. Nothing is fetched from outside the service: the docs page is BentoML's bundled Swagger UI
(``/static_content/``) without the tag manager and badges of BentoML's own index page, and the OpenAPI ``info``
(title, version, description) is this project's (serving/openapi.py).

The pages hold no data, so they are served without the API key (serving/gate.py); the demo page asks for the key
and sends it with its API calls.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse
from starlette.routing import Route

from .errors import ClientError, error_response

WEB = Path(__file__).with_name("web")
ASSETS = {
    "demo.css": "text/css",
    "demo.js": "text/javascript",
    "docs.css": "text/css",
    "docs.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
PAGE_PATHS = frozenset({"/", "/demo", "/demo/", "/docs.json", "/favicon.ico"})
PAGE_PREFIXES = ("/demo/", "/static_content/")
NO_CACHE = {"cache-control": "no-cache"}  # revalidated, so a new version of the page is picked up at once


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIXES)


async def demo(request) -> FileResponse:
    return FileResponse(WEB / "demo.html", headers=NO_CACHE)


async def docs(request) -> FileResponse:
    return FileResponse(WEB / "docs.html", headers=NO_CACHE)


async def asset(request):
    name = request.path_params["name"]
    if name not in ASSETS:  # a fixed list: no path from the URL reaches the file system
        return error_response(ClientError(404, "not_found", f"no such file: /demo/{name}"))
    return FileResponse(WEB / name, media_type=ASSETS[name], headers=NO_CACHE)


async def favicon(request) -> FileResponse:
    return FileResponse(WEB / "favicon.svg", media_type=ASSETS["favicon.svg"], headers=NO_CACHE)


ROUTES = [
    Route("/", docs),
    Route("/demo", demo),
    Route("/demo/", demo),
    Route("/demo/{name}", asset),
    Route("/favicon.ico", favicon),
]

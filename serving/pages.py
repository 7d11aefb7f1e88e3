"""The service's own pages, on the API's port: the demo at ``/demo`` and the API docs at ``/``.

Both are static files in serving/web/ (plain HTML, CSS and JavaScript, no build step) that call the same typed
API as any client. Nothing is fetched from outside the service: the docs page is BentoML's bundled Swagger UI
(``/static_content/``) without the tag manager and badges of BentoML's own index page, and the OpenAPI ``info``
(title, version, description) is this project's (``DocumentedService``).

The pages hold no data, so they are served without the API key (serving/gate.py); the demo page asks for the key
and sends it with its API calls.
"""
from __future__ import annotations

from pathlib import Path

import bentoml
from starlette.responses import FileResponse
from starlette.routing import Route

from . import __version__
from .errors import ClientError, error_response

WEB = Path(__file__).with_name("web")
ASSETS = {"demo.css": "text/css", "demo.js": "text/javascript", "docs.css": "text/css",
          "docs.js": "text/javascript", "favicon.svg": "image/svg+xml"}
PAGE_PATHS = frozenset({"/", "/demo", "/demo/", "/docs.json", "/favicon.ico"})
PAGE_PREFIXES = ("/demo/", "/static_content/")
NO_CACHE = {"cache-control": "no-cache"}      # revalidated, so a new version of the page is picked up at once
TITLE = "rnntext: BBC News topics and Sherlock Holmes text"
DESCRIPTION = """\
Two recurrent text models on ONNX Runtime: a **BiLSTM topic classifier** for news articles (business,
entertainment, politics, sport, tech) and a **character-level LSTM** that writes in the style of the Sherlock
Holmes stories, streamed as server-sent events, with sessions that continue where the last request stopped.

**Try it in a browser: [the demo page](/demo).** `GET /info` says which models, precision and limits this server
runs with. Errors are JSON bodies `{"error", "kind"}` with a 4xx status. When the server has an API key, send it
as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIXES)


async def demo(request) -> FileResponse:
    return FileResponse(WEB / "demo.html", headers=NO_CACHE)


async def docs(request) -> FileResponse:
    return FileResponse(WEB / "docs.html", headers=NO_CACHE)


async def asset(request):
    name = request.path_params["name"]
    if name not in ASSETS:      # a fixed list: no path from the URL reaches the file system
        return error_response(ClientError(404, "not_found", f"no such file: /demo/{name}"))
    return FileResponse(WEB / name, media_type=ASSETS[name], headers=NO_CACHE)


async def favicon(request) -> FileResponse:
    return FileResponse(WEB / "favicon.svg", media_type=ASSETS["favicon.svg"], headers=NO_CACHE)


ROUTES = [Route("/", docs), Route("/demo", demo), Route("/demo/", demo), Route("/demo/{name}", asset),
          Route("/favicon.ico", favicon)]


class DocumentedService(bentoml.Service):
    """BentoML's service with this project's OpenAPI ``info``: BentoML would describe it with its own readme
    (badges from outside, "a Machine Learning Service created with BentoML") and version "None" unless it runs
    from a built Bento."""

    @property
    def doc(self) -> str:
        return DESCRIPTION

    @property
    def openapi_spec(self):
        import attr  # BentoML's OpenAPI objects are frozen attrs classes

        spec = super().openapi_spec
        return attr.evolve(spec, info=attr.evolve(spec.info, title=TITLE, version=__version__, contact=None))

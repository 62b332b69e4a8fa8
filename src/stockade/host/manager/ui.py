"""The read-only status page, ``GET /ui`` (docs/host-api.md, "Status page";
docs/adr/0021-web-status-page.md).

Four static files shipped as package data (``static/``): the HTML, one script,
one style sheet and an icon. They carry no data and need no token: the script asks
the user for the bearer token, keeps it in ``sessionStorage`` and calls the
CBOR API itself (``GET /v1/keeps``, ``GET /v1/host``, CBOR decoded in
the page) with ``Authorization: Bearer``. The files are read once, when
the app is made.

Every answer carries a Content-Security-Policy that allows this origin's
script, style and fetches only (no inline script or style, no frames, no
form submission, no plugins), ``X-Content-Type-Options: nosniff``, no
referrer, and ``Cache-Control: no-cache``.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

#: The page's policy (CSP Level 3, https://www.w3.org/TR/CSP3/): no inline
#: script or style anywhere, fetches to this origin only, and no native form
#: submission, so a token typed into the form can never leave in a URL.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: File name under /ui/ -> media type; GET /ui is index.html.
ASSETS: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


def asset(name: str) -> bytes:
    """The bytes of ``static/<name>`` (package data)."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


def ui_routes() -> list[BaseRoute]:
    """``GET /ui`` (the page) and ``GET /ui/{name}`` (its files; any other
    name is 404)."""
    files = {name: asset(name) for name in ASSETS}  # read once

    def answer(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, "Not Found")
        return Response(files[name], 200, headers=HEADERS, media_type=ASSETS[name])

    async def page(request: Request) -> Response:
        return answer("index.html")

    async def file(request: Request) -> Response:
        return answer(request.path_params["name"])

    return [Route("/ui", page, methods=["GET"]), Route("/ui/{name}", file, methods=["GET"])]

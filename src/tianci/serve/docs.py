"""/docs (Swagger UI) and /redoc served with no network: their scripts come from the copies the
`fastapi-offline` package ships (FastAPI's defaults load them from a CDN, so the pages are blank
offline). Without that package `create_app(docs=True)` falls back to FastAPI's CDN pages."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import Response

ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png"}
PREFIX = "/docs-assets"


def load_assets() -> dict[str, bytes] | None:
    try:
        root = resources.files("fastapi_offline") / "static"
        return {name: (root / name).read_bytes() for name in ASSETS}
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def add_docs(app: FastAPI, assets: dict[str, bytes]) -> None:
    """Add /docs, /redoc and their assets (from load_assets())."""

    @app.get(PREFIX + "/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        if name not in assets:  # a fixed table: the path never reaches the file system
            return Response(status_code=404)
        return Response(assets[name], media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"})

    @app.get("/docs", include_in_schema=False)
    async def swagger():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API",
                                   swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{PREFIX}/swagger-ui.css",
                                   swagger_favicon_url=f"{PREFIX}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} API",
                              redoc_js_url=f"{PREFIX}/redoc.standalone.js",
                              redoc_favicon_url=f"{PREFIX}/favicon.png", with_google_fonts=False)

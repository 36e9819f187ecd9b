"""What a browser gets: the search page at ``/`` (plain HTML and JavaScript from ``api/static``), and
``/docs`` with Swagger UI served from the installed ``swagger-ui-bundle-v2`` package, not a CDN."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"
SWAGGER = "/static/swagger"


def add_pages(app: FastAPI) -> None:
    """Mount the page, its assets and the offline docs on ``app`` (created with ``docs_url=None``)."""
    app.mount(SWAGGER, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                                   swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER}/swagger-ui.css",
                                   swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png")

"""Tributary's pages inside the Airflow UI.

Each page is a small FastAPI app that the `tributary` plugin (plugins/tributary_plugin.py) mounts
on the api-server under `/tributary/<slug>/` and puts in the UI's navigation as an external view
(an iframe at `/plugin/tributary-<slug>`). A page module exposes one `UIPage`; the plugin lists them.

Airflow authenticates nothing a plugin app serves, so every page app is built by `page_app`, whose
routes all depend on Airflow's own `get_user`: the JWT in the `Authorization: Bearer` header, or
the `_token` cookie the UI sets at login (the iframe and its fetch calls are same-origin, so the
cookie goes along). No token is a 401. Static assets are served by a route of the same app, so
they sit behind the same check; the OpenAPI and docs routes, which would not, are switched off.

Airflow imports every `.py` file under plugins/ as a top-level module when it looks for plugins,
so modules here use absolute imports only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.responses import FileResponse

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
URL_PREFIX = "/tributary"

# The pages are plain files, no inline script or style, and only the Airflow UI may frame them.
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'; base-uri 'self'"


@dataclass(frozen=True)
class UIPage:
    """One page: its app, where Airflow mounts it, and the nav entry that embeds it."""

    slug: str
    title: str
    app: FastAPI
    icon: str | None = None  # file name in STATIC_DIR

    @property
    def url_prefix(self) -> str:
        return f"{URL_PREFIX}/{self.slug}"

    def fastapi_app(self) -> dict[str, Any]:
        """The plugin's `fastapi_apps` entry."""
        return {"app": self.app, "url_prefix": self.url_prefix, "name": f"Tributary {self.title.lower()}"}

    def external_view(self) -> dict[str, Any]:
        """The plugin's `external_views` entry: a top-level nav item showing the page in an iframe."""
        # The UI resolves hrefs without a leading slash against its base URL, so the links
        # survive an api-server served under a path prefix.
        href = f"{self.url_prefix.lstrip('/')}/"
        view: dict[str, Any] = {
            "name": self.title,
            "href": href,
            "destination": "nav",
            "url_route": f"tributary-{self.slug}",
            "nav_top_level": True,
        }
        if self.icon:
            view["icon"] = f"{href}static/{self.icon}"
        return view


def page_app(title: str) -> FastAPI:
    """A FastAPI app whose every route needs a signed-in Airflow user, with `GET /static/<file>`."""
    app = FastAPI(
        title=title,
        dependencies=[Depends(get_user)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_api_route("/static/{name}", static_file, methods=["GET"], include_in_schema=False)
    return app


def static_file(name: str) -> FileResponse:
    """A file directly in STATIC_DIR (the route parameter cannot hold a '/')."""
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or not path.is_file():
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no static file {name!r}")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


@contextmanager
def database_unavailable_as_503(missing: str, unreadable: str) -> Iterator[None]:
    """Missing tables or an unreachable PostgreSQL become a 503 whose detail names the fix.

    `missing`: what does not exist yet (e.g. "the job registry tables"); `unreadable`: what
    cannot be read (e.g. "the job registry").
    """
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"{missing} ({exc.diag.message_primary}); run `tributary migrate`",
        ) from exc
    except psycopg.OperationalError as exc:
        log.warning("cannot read %s: %s", unreadable, exc)
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"cannot read {unreadable} ({str(exc).strip()}); check that PostgreSQL is up and "
            "TRIBUTARY_PG_URL of the Airflow api-server points at it",
        ) from exc

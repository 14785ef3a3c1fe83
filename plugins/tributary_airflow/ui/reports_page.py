"""The "Compaction reports" page: every run of the compaction job, each linking to its report.

`GET /` lists the rows of `compaction_reports` (newest first); `GET /{id}` is one report as an
HTML page with its charts (`tributary.compaction_report.render_html`, drawn by
static/compaction-report.js with the ECharts copy under static/vendor/, which
scripts/install_js.sh fetched from npm); `GET /{id}/json` is the report's JSON. Mounted at
/tributary/reports/ by the plugin; every route needs a signed-in Airflow user (see
`tributary_airflow.ui`).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from fastapi import HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from tributary.clients import pg_connect
from tributary.compaction_report import ECHARTS_FILE, CompactionReport, list_reports, load_report, render_html
from tributary.settings import load_settings
from tributary_airflow.ui import CONTENT_SECURITY_POLICY, UIPage, database_unavailable_as_503, page_app

log = logging.getLogger(__name__)

TITLE = "Compaction reports"
LIST_LIMIT = 200
VENDOR_DIR = ECHARTS_FILE.parent

# ECharts writes its tooltips as HTML with style attributes: styles may be inline, scripts may not.
REPORT_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY + "; style-src 'self' 'unsafe-inline'"

_LIST_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<base href="{base}">
<title>{title} · Tributary</title>
<link rel="stylesheet" href="static/tributary.css">
<link rel="stylesheet" href="static/compaction-report.css">
</head>
<body>
<header>
  <h1>{title}</h1>
  <p class="status">The daily <span class="mono">tributary_compaction</span> DAG archives raw days past their hot
  retention to the lake and expires old indices and outbox rows; each run leaves a report.</p>
</header>
<main>
{table}
</main>
</body>
</html>
"""

_STATE_CLASS = {"succeeded": "running", "failed": "failed", "running": "starting"}

app = page_app(f"Tributary {TITLE.lower()}")


def _base(request: Request) -> str:
    # Relative links resolve against the mount point whether or not the URL ends with '/'.
    return str(request.scope.get("root_path", "")).rstrip("/") + "/"


@contextmanager
def _reports_db() -> Iterator[psycopg.Connection[Any]]:
    """A connection to the pipeline database; missing tables or server become a 503 with the fix."""
    with (
        database_unavailable_as_503("the compaction reports table does not exist yet", "the compaction reports"),
        pg_connect(load_settings().pg_url, application_name="tributary-ui") as conn,
    ):
        yield conn


@app.get("/", response_class=HTMLResponse)
def reports_list(request: Request) -> HTMLResponse:
    """Every report, newest first, each row linking to the report's page."""
    with _reports_db() as conn:
        reports = list_reports(conn, limit=LIST_LIMIT)
    if reports:
        rows = []
        for r in reports:
            duration = f"{(r.finished_at - r.started_at).total_seconds():.1f} s" if r.finished_at else "running"
            badge = f'<span class="badge state-{_STATE_CLASS.get(r.state, "stopped")}">{html.escape(r.state.upper())}</span>'
            if r.dry_run:
                badge += ' <span class="muted">dry run</span>'
            rows.append(
                f'<tr data-report="{r.id}"><td><a href="{r.id}">#{r.id}</a></td>'
                f"<td>{html.escape(r.started_at.isoformat(timespec='seconds'))}</td>"
                f'<td class="num">{duration}</td><td>{badge}</td>'
                f'<td class="mono">{html.escape(r.run_id)}</td><td>{html.escape(r.summary or "")}</td></tr>'
            )
        table = (
            '<table class="reports"><thead><tr><th scope="col">Report</th><th scope="col">Started (UTC)</th>'
            '<th scope="col" class="num">Duration</th><th scope="col">State</th><th scope="col">Run</th>'
            '<th scope="col">Summary</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
        )
    else:
        table = '<p class="muted">No compaction has run yet.</p>'
    body = _LIST_PAGE.format(base=html.escape(_base(request), quote=True), title=html.escape(TITLE), table=table)
    return HTMLResponse(body, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"})


def _report(report_id: int) -> CompactionReport:
    with _reports_db() as conn:
        report = load_report(conn, report_id)
    if report is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no compaction report #{report_id}")
    return report


@app.get("/{report_id}", response_class=HTMLResponse)
def report_page(report_id: int, request: Request) -> HTMLResponse:
    """One report with its charts, rendered from the JSON stored in the table."""
    report = _report(report_id)
    body = render_html(
        report,
        asset_base="static/",
        base_href=_base(request),
        back_href="./",
        echarts_path="vendor/echarts.min.js",
        echarts_available=ECHARTS_FILE.is_file(),
    )
    return HTMLResponse(
        body, headers={"Content-Security-Policy": REPORT_CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"}
    )


@app.get("/{report_id}/json")
def report_json(report_id: int) -> JSONResponse:
    """The report as JSON (what the page is rendered from)."""
    return JSONResponse(_report(report_id).to_json(), headers={"Cache-Control": "no-store"})


@app.get("/static/vendor/{name}", include_in_schema=False)
def vendor_file(name: str) -> FileResponse:
    """A JavaScript library fetched from npm by scripts/install_js.sh (e.g. echarts.min.js)."""
    path = (VENDOR_DIR / name).resolve()
    if path.parent != VENDOR_DIR.resolve() or not path.is_file():
        missing = " (run scripts/install_js.sh, part of `make setup`)" if path == ECHARTS_FILE.resolve() else ""
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no vendor file {name!r}{missing}")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


PAGE = UIPage(slug="reports", title=TITLE, app=app)

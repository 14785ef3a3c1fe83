"""The "Streaming jobs" page: state, freshness, throughput, lag and restarts of every streaming job.

`GET /` is the page (static/jobs.js renders it and refreshes it every 5 s from `GET /api/jobs`,
the JSON list of `tributary.job_overview.JobOverview`). Mounted at /tributary/jobs/ by the plugin;
every route needs a signed-in Airflow user (see `tributary_airflow.ui`).
"""

from __future__ import annotations

import html
import logging

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse

from tributary.job_overview import job_overview
from tributary.settings import load_settings
from tributary_airflow.ui import CONTENT_SECURITY_POLICY, UIPage, database_unavailable_as_503, page_app

log = logging.getLogger(__name__)

TITLE = "Streaming jobs"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<base href="{base}">
<title>{title} · Tributary</title>
<link rel="stylesheet" href="static/tributary.css">
<script src="static/jobs.js" defer></script>
</head>
<body>
<header>
  <h1>{title}</h1>
  <p id="status" role="status" class="status">Loading…</p>
</header>
<main>
<table class="jobs">
  <thead>
    <tr>
      <th scope="col">Job</th>
      <th scope="col">State</th>
      <th scope="col">Last batch</th>
      <th scope="col" class="num">Input rows/s</th>
      <th scope="col" class="num">Processed rows/s</th>
      <th scope="col" class="num">Lag</th>
      <th scope="col" class="num">Restarts</th>
      <th scope="col">Last error</th>
      <th scope="col">Recent actions</th>
    </tr>
  </thead>
  <tbody id="jobs"></tbody>
</table>
</main>
</body>
</html>
"""

app = page_app(f"Tributary {TITLE.lower()}")


@app.get("/", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    """The page shell; the table is filled in by static/jobs.js."""
    # Relative links resolve against the mount point whether or not the URL ends with '/'.
    base = request.scope.get("root_path", "").rstrip("/") + "/"
    body = _PAGE.format(base=html.escape(base, quote=True), title=html.escape(TITLE))
    return HTMLResponse(body, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


@app.get("/api/jobs")
def list_jobs() -> JSONResponse:
    """Every catalog pipeline's job, as `JobOverview.to_json()` dicts, in catalog order."""
    with database_unavailable_as_503("the job registry tables do not exist yet", "the job registry"):
        jobs = job_overview(load_settings().pg_url)
    return JSONResponse([job.to_json() for job in jobs], headers={"Cache-Control": "no-store"})


PAGE = UIPage(slug="jobs", title=TITLE, app=app, icon="jobs.svg")

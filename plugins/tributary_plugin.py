"""The `tributary` Airflow plugin: Tributary's pages inside the Airflow UI.

Each page (`tributary_airflow.ui.UIPage`) is a FastAPI app mounted on the api-server under
/tributary/<slug>/ and a top-level nav entry that shows it in an iframe. Adding a page is one
module under tributary_airflow/ui/ and one entry in PAGES. Every page requires a signed-in user.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tributary_airflow.ui import UIPage
from tributary_airflow.ui.dashboard_page import PAGE as DASHBOARD_PAGE
from tributary_airflow.ui.jobs_page import PAGE as JOBS_PAGE
from tributary_airflow.ui.reports_page import PAGE as REPORTS_PAGE

PAGES: tuple[UIPage, ...] = (JOBS_PAGE, DASHBOARD_PAGE, REPORTS_PAGE)


class TributaryPlugin(AirflowPlugin):
    """Registers every page of PAGES with the api-server and the UI navigation."""

    name = "tributary"
    fastapi_apps = [page.fastapi_app() for page in PAGES]
    external_views = [page.external_view() for page in PAGES]

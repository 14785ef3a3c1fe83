"""A small client of Airflow 3's REST API (v2): token, unpause, trigger, wait for a run.

`tributary up` uses it to run the bootstrap and supervisor DAGs the way a user would from the
UI; tests use it to drive Airflow for real.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL_STATES = {"success", "failed"}


class AirflowApiError(RuntimeError):
    pass


class AirflowApi:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = {"username": username, "password": password}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AirflowApi:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def token(self) -> str:
        if self._token is None:
            response = self._client.post("/auth/token", json=self._credentials)
            if response.status_code not in (200, 201):
                raise AirflowApiError(
                    f"Airflow at {self.base_url} refused the login ({response.status_code}): {response.text[:300]}; "
                    "check TRIBUTARY_AIRFLOW_USER and the generated password file"
                )
            self._token = str(response.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, path, headers={"Authorization": f"Bearer {self.token()}"}, **kwargs)
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120.0) -> None:
        """Until the dag processor has parsed `dag_id` (first start: a few seconds)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.request("GET", f"/api/v2/dags/{dag_id}")
                return
            except AirflowApiError as error:
                if time.monotonic() > deadline:
                    raise AirflowApiError(
                        f"DAG {dag_id} did not show up within {timeout_s:.0f}s ({error}); "
                        "check the dag-processor log for import errors"
                    ) from error
            time.sleep(2.0)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout_s: float = 300.0,
        progress: Callable[[str], None] | None = None,
    ) -> str:
        """The run's final state; raises on timeout."""
        deadline, last = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state != last and progress:
                progress(f"{dag_id}: {state}")
            last = state
            if state in TERMINAL_STATES:
                return state
            time.sleep(2.0)
        raise AirflowApiError(f"{dag_id} run {run_id} still {last} after {timeout_s:.0f}s; see the Airflow UI")

    def failed_task_logs_hint(self, dag_id: str, run_id: str) -> str:
        return f"{self.base_url}/dags/{dag_id}/runs/{run_id}"

"""In-process clients of a Tributary UI page app, mounted as the api-server mounts it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.api_fastapi.core_api.security import get_user
from fastapi import FastAPI
from fastapi.testclient import TestClient


@contextmanager
def mounted(app: FastAPI, prefix: str) -> Iterator[TestClient]:
    """A client of `app` mounted under `prefix`; overridden dependencies are cleared afterwards."""
    root = FastAPI()
    root.mount(prefix, app)
    try:
        with TestClient(root) as client:
            yield client
    finally:
        app.dependency_overrides.clear()


def signed_in_as_viewer(app: FastAPI, client: TestClient) -> TestClient:
    """`client` with Airflow's `get_user` answering for a viewer (the real check runs in the browser tests)."""
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="viewer", role="viewer")
    return client

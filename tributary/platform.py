"""What `tributary up` does once the services are healthy, and `down` before they stop.

Up: bootstrap through Airflow (the DAG a user would trigger), demo users, the catalog's autostart
jobs set to *running* and started by a supervisor run, then the demo producer, so a newcomer
sees data flowing. Down: the producer, then the streaming drivers (SIGTERM: they stop at a batch
boundary), after Airflow so the supervisor cannot restart them meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tributary.airflow_api import AirflowApi
from tributary.airflow_env import admin_password, passwords_file
from tributary.catalog import PIPELINES, USER_EVENTS, Pipeline, get_pipeline
from tributary.clients import pg_connect
from tributary.drivers import stop_driver
from tributary.registry import JobRegistry
from tributary.settings import REPO_ROOT, Settings
from tributary.stack.errors import StackError

BOOTSTRAP_DAG = "tributary_bootstrap"
SUPERVISOR_DAG = "tributary_streaming_supervisor"
CONTROL_DAG = "tributary_streaming_control"
DEMO_USERS = 1_000
# JVM start, Python workers and the first batch of a job on 2 cores.
JOB_START_TIMEOUT_S = 240

Progress = Callable[[str], None]


def runnable_pipelines() -> list[Pipeline]:
    """Autostart pipelines whose job exists in this checkout."""
    return [p for p in PIPELINES.values() if p.autostart and (REPO_ROOT / p.job_path).exists()]


def start(settings: Settings, progress: Progress) -> None:
    password = admin_password(settings)
    if password is None:
        raise StackError(f"no Airflow admin password in {passwords_file(settings)}; is the api-server up?")
    with AirflowApi(settings.airflow_url, settings.airflow_user, password) as api:
        progress("platform: waiting for Airflow to parse the DAGs ...")
        for dag in (BOOTSTRAP_DAG, SUPERVISOR_DAG, CONTROL_DAG):
            api.wait_for_dag(dag)
        _run_dag(api, BOOTSTRAP_DAG, progress)
        seed_demo_users(settings, progress)
        jobs = [p.job_name for p in runnable_pipelines()]
        with pg_connect(settings.pg_url, application_name="tributary-up") as conn:
            registry = JobRegistry(conn)
            registry.ensure(jobs)
            for job in jobs:
                registry.request_start(job, "tributary up")
        progress(f"platform: jobs {', '.join(jobs)} set to running; supervisor run ...")
        # Runs of a paused DAG stay queued: the control DAG must answer its first trigger.
        api.unpause(CONTROL_DAG)
        api.unpause(SUPERVISOR_DAG)
        _run_dag(api, SUPERVISOR_DAG, progress)
    wait_until_running(settings, jobs, progress)


def _run_dag(api: AirflowApi, dag_id: str, progress: Progress) -> None:
    api.unpause(dag_id)
    run_id = api.trigger(dag_id)
    state = api.wait_for_run(dag_id, run_id, timeout_s=600, progress=progress)
    if state != "success":
        raise StackError(f"{dag_id} run {state}: see its task logs at {api.failed_task_logs_hint(dag_id, run_id)}")


def seed_demo_users(settings: Settings, progress: Progress) -> None:
    from tributary.producers.user_events import user_rows

    lookup = USER_EVENTS.tables.lookup or "users"
    with pg_connect(settings.pg_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {lookup}").fetchone()
        if row and row[0]:
            return
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {lookup} (user_id, name, email, region, segment) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (user_id) DO NOTHING",
                user_rows(DEMO_USERS),
            )
    progress(f"platform: {DEMO_USERS} demo users in {lookup}")


def wait_until_running(settings: Settings, jobs: Sequence[str], progress: Progress) -> None:
    deadline = time.monotonic() + JOB_START_TIMEOUT_S
    pending = set(jobs)
    while pending:
        with pg_connect(settings.pg_url) as conn:
            registry = JobRegistry(conn)
            records = {job: registry.get(job) for job in pending}
        for job, record in records.items():
            if record.actual_state == "running":
                progress(f"platform: {job} running (pid {record.pid})")
                pending.discard(job)
            elif record.actual_state == "failed":
                raise StackError(f"{job} failed to start: {record.last_error}\nlog: {record.log_path}")
        if pending and time.monotonic() > deadline:
            raise StackError(
                f"{', '.join(sorted(pending))} not running after {JOB_START_TIMEOUT_S}s; "
                f"see the job logs under {settings.state_dir / 'logs' / 'jobs'}"
            )
        if pending:
            time.sleep(2.0)


def stop_jobs(settings: Settings, progress: Progress | None, grace_s: float = 60.0) -> None:
    """Stop every local driver the registry knows (SIGKILL after `grace_s`); desired states are kept."""
    try:
        conn = pg_connect(settings.pg_url, application_name="tributary-down", connect_timeout=5)
    except Exception as error:  # noqa: BLE001 - no database: no registry, nothing of ours to stop
        if progress:
            progress(f"jobs: registry not reachable ({error}); no streaming drivers stopped")
        return
    with conn:
        registry = JobRegistry(conn)
        try:
            records = [r for r in registry.all() if r.pid]
        except Exception as error:  # noqa: BLE001 - before the first migration there is no registry
            if progress:
                progress(f"jobs: no registry yet ({error.__class__.__name__}); nothing to stop")
            return
        for record in records:
            assert record.pid is not None
            if progress:
                progress(f"jobs: stopping {record.job_name} (pid {record.pid}) ...")
            main_file = str(REPO_ROOT / get_pipeline(record.job_name).job_path)
            # SIGTERM to the Python driver (it stops its queries between batches), SIGKILL after.
            stop_driver(record.pid, main_file, grace_s)
            registry.record_exit(record.job_name, "stopped")
            registry.log(record.job_name, "stop", "tributary down")

"""`tributary up|status|down` for real: Apache Kafka, osmem and Airflow on free ports, a throwaway state dir,
Airflow's metadata in a fresh database on the real PostgreSQL server. Plus the session fixtures."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tributary.airflow_api import AirflowApi, AirflowApiError
from tributary.catalog import APP_LOGS, PIPELINES
from tributary.clients import es_client, kafka_admin, pg_connect
from tributary.kafka_log import KafkaLog
from tributary.settings import REPO_ROOT, Settings, load_settings
from tributary.stack import StackError, State
from tributary.stack.ports import free_port
from tributary.stack.postgres import PostgresServer, database_url, drop_database
from tributary.stack.processes import PidFile, PidRecord, read_proc_stat

pytestmark = pytest.mark.integration

COMPONENTS = (
    "postgres",
    "kafka",
    "elasticsearch",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "producer",
    "producer-weather",
    "producer-app_logs",
)


def tributary(env: dict[str, str], *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """Run the CLI as `make up` does, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "tributary.cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def table_states(output: str) -> dict[str, str]:
    """component -> state, from the summary table (state may be two words: 'already running')."""
    states = {}
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in COMPONENTS and len(cells) >= 2:
            states[cells[0]] = cells[1]
    return states


def gone(pid: int) -> bool:
    stat = read_proc_stat(pid)
    return stat is None or stat.is_zombie


def pid_records(state_dir: Path) -> dict[str, PidRecord]:
    records = {}
    for path in (state_dir / "run").glob("*.pid"):
        record = PidFile(path).read()
        assert record is not None
        records[path.stem] = record
    return records


def sink_counts(conn: psycopg.Connection[Any], tables: Sequence[str]) -> dict[str, int]:
    """Rows per table."""
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # type: ignore[index]


@pytest.fixture
def stack_env(tmp_path: Path, pg_server_url: str) -> Iterator[dict[str, str]]:
    """Environment for a private stack: free ports, embedded Kafka/ES, throwaway databases.

    Whatever happens in the test, `down` runs and the databases are dropped afterwards.
    """
    name = f"tributary_test_{uuid.uuid4().hex[:12]}"
    data_url = database_url(pg_server_url, name)
    airflow_url = database_url(pg_server_url, f"{name}_airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIBUTARY_", "AIRFLOW"))}
    env.update(
        {
            "TRIBUTARY_STATE_DIR": str(tmp_path / "state"),
            "TRIBUTARY_PG_URL": data_url,
            "TRIBUTARY_AIRFLOW_DB_URL": airflow_url,
            "TRIBUTARY_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "TRIBUTARY_KAFKA_CONTROLLER_PORT": str(free_port()),
            "TRIBUTARY_ES_URL": f"http://127.0.0.1:{free_port()}",
            "TRIBUTARY_AIRFLOW_PORT": str(free_port()),
        }
    )
    try:
        yield env
    finally:
        down = tributary(env, "down", timeout=120)
        drop_database(airflow_url)
        drop_database(data_url)
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_up_is_healthy_idempotent_and_down_stops_everything(stack_env: dict[str, str]) -> None:
    state_dir = Path(stack_env["TRIBUTARY_STATE_DIR"])
    airflow_url = f"http://127.0.0.1:{stack_env['TRIBUTARY_AIRFLOW_PORT']}"

    up = tributary(stack_env, "up", timeout=480)
    assert up.returncode == 0, up.stdout + up.stderr
    states = table_states(up.stdout)
    assert states == {"postgres": "external", **{c: "started" for c in COMPONENTS[1:]}}, up.stdout
    assert "tributary_bootstrap: success" in up.stdout and "tributary_streaming_supervisor: success" in up.stdout

    # The supervisor started every job; the demo producers feed them: data in every sink within
    # two minutes (the acceptance: "all three jobs RUNNING ... live data within two minutes").
    data_url = stack_env["TRIBUTARY_PG_URL"]
    with pg_connect(data_url) as conn:
        jobs = {
            r[0]: (r[1], r[2])
            for r in conn.execute("SELECT job_name, actual_state, pid FROM streaming_jobs").fetchall()
        }
    assert {job: state for job, (state, _) in jobs.items()} == dict.fromkeys(PIPELINES, "running"), up.stdout
    assert all(pid for _, pid in jobs.values()), jobs
    driver_pid = jobs["user_events"][1]
    sinks = (
        "user_events",
        "user_activity_summary",
        "weather_readings",
        "weather_summary",
        "app_log_events",
        "app_log_minute_stats",
        "dead_letters",
    )
    counts: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with pg_connect(data_url) as conn:
            counts = sink_counts(conn, sinks)
            age = conn.execute(
                "SELECT extract(epoch FROM now() - min(latest)) FROM ("
                "SELECT max(recorded_at) AS latest FROM job_heartbeats WHERE input_rows > 0 GROUP BY job_name) AS l"
            ).fetchone()[0]  # type: ignore[index]
        if all(counts.values()) and age is not None and age < 60:
            break
        time.sleep(3)
    else:
        job_logs = "\n".join(p.read_text()[-2000:] for p in (state_dir / "logs" / "jobs").glob("*.log"))
        raise AssertionError(
            f"not every sink has recent data ({counts}, oldest latest batch {age}s); logs:\n{job_logs}"
        )
    search = es_client(replace(load_settings(), es_url=stack_env["TRIBUTARY_ES_URL"]))
    search.indices.refresh(index=APP_LOGS.indices["logs"].pattern)
    assert search.count(index=APP_LOGS.indices["logs"].pattern)["count"] > 0

    with urllib.request.urlopen(f"{airflow_url}/api/v2/monitor/health", timeout=5) as resp:
        health = json.loads(resp.read())
    assert {k: health[k]["status"] for k in ("metadatabase", "scheduler", "dag_processor", "triggerer")} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "dag_processor": "healthy",
        "triggerer": "healthy",
    }

    login = re.search(r"Airflow login: admin / (\S+)", up.stdout)
    assert login, up.stdout
    request = urllib.request.Request(
        f"{airflow_url}/auth/token",
        data=json.dumps({"username": "admin", "password": login.group(1)}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.loads(resp.read())["access_token"]

    records = pid_records(state_dir)
    assert set(records) == set(COMPONENTS[1:])
    # Nothing of ours listens beyond loopback (Airflow's log servers would be on 0.0.0.0), the
    # streaming drivers (Spark UI, block manager) included.
    our_pids = {pid for record in records.values() for pid in record.group_members()}
    for _, pid in jobs.values():
        driver = psutil.Process(pid)
        our_pids |= {driver.pid, *(child.pid for child in driver.children(recursive=True))}
    listeners = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    for line in listeners.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & our_pids:
            # A JVM's IPv4 listener on a dual-stack socket shows as [::ffff:127.0.0.1].
            assert line.split()[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), line

    # The control DAG: typed params refuse what the catalog does not know; `stop` stops cleanly.
    with AirflowApi(airflow_url, "admin", login.group(1)) as api:
        for bad in ({"job": "no_such_job", "action": "stop"}, {"job": "user_events", "action": "explode"}):
            with pytest.raises(AirflowApiError, match="400"):
                api.trigger("tributary_streaming_control", conf=bad)
        run_id = api.trigger("tributary_streaming_control", conf={"job": "user_events", "action": "stop"})
        assert api.wait_for_run("tributary_streaming_control", run_id, timeout_s=180) == "success"
    with pg_connect(data_url) as conn:
        assert conn.execute(
            "SELECT desired_state, actual_state, pid FROM streaming_jobs WHERE job_name = 'user_events'"
        ).fetchone() == ("stopped", "stopped", None)
    assert gone(driver_pid), "the stopped job's driver still runs"

    # `up` again: every service already runs; the job is wanted again and the supervisor starts it.
    again = tributary(stack_env, "up", timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert table_states(again.stdout) == {"postgres": "external", **{c: "already running" for c in COMPONENTS[1:]}}
    assert pid_records(state_dir) == records

    status = tributary(stack_env, "status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert table_states(status.stdout) == {"postgres": "external", **{c: "running" for c in COMPONENTS[1:]}}

    with pg_connect(data_url) as conn:
        state, driver_pid = conn.execute(
            "SELECT actual_state, pid FROM streaming_jobs WHERE job_name = 'user_events'"
        ).fetchone()  # type: ignore[misc]
    assert state == "running" and driver_pid, again.stdout

    down = tributary(stack_env, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert gone(driver_pid), "the job's driver still runs after down"
    for name, record in records.items():
        assert not record.is_alive(), f"{name} (pid {record.pid}) still runs"
        assert record.group_members() == [], f"{name}: processes {record.group_members()} still run"
    assert pid_records(state_dir) == {}
    assert tributary(stack_env, "status", timeout=60).returncode == 1

    # `down`, then `up`: nothing is truncated, the broker kept its logs and every job resumes
    # from its checkpoint (Spark's batch ids go on from where they were, not from 0).
    kafka = KafkaLog({"bootstrap.servers": stack_env["TRIBUTARY_KAFKA_BOOTSTRAP"]}, client_id="test-stack")
    with pg_connect(data_url) as conn:
        kept = sink_counts(conn, sinks)
        last_batch = {
            (job, query): batch
            for job, query, batch in conn.execute(
                "SELECT job_name, query_name, max(batch_id) FROM job_heartbeats GROUP BY 1, 2"
            ).fetchall()
        }
    assert {job for job, _ in last_batch} == set(PIPELINES), last_batch
    restarted_at = datetime.now(UTC)
    restarted = tributary(stack_env, "up", timeout=480)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "clearing stream state" not in restarted.stdout
    try:
        log_ends = {p.topic.name: kafka.topic_bounds(p.topic.name) for p in PIPELINES.values()}
    finally:
        kafka.close()
    assert all(sum(b.end for b in ends.values()) > 0 for ends in log_ends.values()), log_ends
    deadline = time.monotonic() + 180
    while True:
        with pg_connect(data_url) as conn:
            now = sink_counts(conn, sinks)
            resumed = {
                (job, query): batch
                for job, query, batch in conn.execute(
                    "SELECT job_name, query_name, min(batch_id) FROM job_heartbeats "
                    "WHERE recorded_at > %s AND input_rows > 0 GROUP BY 1, 2",
                    (restarted_at,),
                ).fetchall()
            }
        assert all(now[t] >= kept[t] for t in sinks), f"rows went missing across down/up: {kept} -> {now}"
        if {job for job, _ in resumed} == set(PIPELINES):
            break
        assert time.monotonic() < deadline, f"not every job processed new records after the restart: {resumed}"
        time.sleep(3)
    # The first batch after the restart is the last one again (replayed: the stop came before its
    # commit) or the next one; a lost checkpoint would start again at 0.
    assert all(batch >= last_batch.get(key, -1) for key, batch in resumed.items()), (last_batch, resumed)
    assert any(key in last_batch for key in resumed), "no query went on from its checkpoint"


def test_up_fails_fast_when_the_kafka_port_is_taken(stack_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {**stack_env, "TRIBUTARY_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}
        started = time.monotonic()
        up = tributary(env, "up", timeout=30)
        elapsed = time.monotonic() - started
    assert up.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f}s to notice"
    assert f"kafka: port {port} on 127.0.0.1 is already in use" in up.stderr, up.stderr
    assert "set TRIBUTARY_KAFKA_BOOTSTRAP to a free address" in up.stderr
    assert "kafka.log" in up.stderr
    assert pid_records(Path(stack_env["TRIBUTARY_STATE_DIR"])) == {}


def test_session_services_answer(settings: Settings, settings_env: dict[str, str]) -> None:
    """The fixtures other tests build on: Kafka, osmem and a fresh database, seen through settings."""
    assert settings.kafka_bootstrap == settings_env["TRIBUTARY_KAFKA_BOOTSTRAP"]
    assert not settings.embedded_kafka and not settings.embedded_es and settings.es_plain_json
    assert kafka_admin(settings).list_topics(timeout=5).brokers
    assert "version" in es_client(settings).info()
    with pg_connect(settings.pg_url) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None and row[0].startswith("tributary_test_")
    assert settings.state_dir.is_relative_to(Path(settings_env["TRIBUTARY_STATE_DIR"]).parent)


@pytest.fixture
def world_traversable_dir() -> Iterator[Path]:
    """A directory the `postgres` user can enter (pytest's own tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tributary-pg-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.slow
def test_private_cluster_when_no_server_answers_on_loopback(world_traversable_dir: Path) -> None:
    port = free_port()
    settings = replace(
        load_settings(),
        state_dir=world_traversable_dir / "state",
        pg_url=f"postgresql://postgres@127.0.0.1:{port}/tributary",
        airflow_db_url=f"postgresql://postgres@127.0.0.1:{port}/tributary_airflow",
    )
    server = PostgresServer(settings, progress=None)
    assert server.status().state is State.STOPPED
    try:
        assert server.up().state is State.STARTED
        assert server.up().state is State.ALREADY_RUNNING  # initdb ran once; nothing restarted
        with pg_connect(database_url(settings.pg_url, "postgres")) as conn:
            names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        assert {"tributary", "tributary_airflow"} <= names
        status = server.status()
        assert status.state is State.RUNNING and status.pid is not None
    finally:
        stopped = server.down()
    assert stopped.state is State.STOPPED
    assert status.pid is not None
    postmaster = read_proc_stat(status.pid)
    assert postmaster is None or postmaster.is_zombie  # exited (init reaps it in its own time)
    assert server.status().state is State.STOPPED


def test_private_cluster_in_a_directory_postgres_cannot_enter_is_refused_clearly(tmp_path: Path) -> None:
    settings = replace(
        load_settings(),
        state_dir=tmp_path / "state",  # under /tmp/pytest-of-root, mode 0700
        pg_url=f"postgresql://postgres@127.0.0.1:{free_port()}/tributary",
    )
    if os.geteuid() != 0:
        pytest.skip("only root runs the cluster as another user")
    with pytest.raises(StackError, match=r"the postgres user cannot enter .*; set TRIBUTARY_STATE_DIR"):
        PostgresServer(settings, progress=None).up()


def test_status_reports_services_that_the_session_runs_as_external(settings_env: dict[str, str]) -> None:
    status = tributary({**os.environ, **settings_env}, "status", timeout=60)
    states = table_states(status.stdout)
    assert states["postgres"] == states["kafka"] == states["elasticsearch"] == "external", status.stdout
    assert states["airflow-api-server"] == "stopped"
    assert status.returncode == 1

"""The backfill DAG's contract and operator: typed params that refuse bad input, the exact
spark-submit command per deploy mode, the job's log streamed through, its error raised.

Connections and targets are built here (no metadata database); a fake `run` stands in for
spark-submit, so no JVM starts.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, ParamValidationError

import tributary_airflow.batch_operators as batch_operators
from spark_jobs.session import POSTGRES_JDBC_JAR
from spark_jobs.submit import SPARK_SUBMIT
from tributary.catalog import USER_EVENTS
from tributary.settings import REPO_ROOT
from tributary_airflow.backends import SparkTarget
from tributary_airflow.batch_operators import BACKFILL_SCRIPT, BackfillOperator, SparkBatchHook

JARS = (
    ["--jars", str(POSTGRES_JDBC_JAR), "--driver-class-path", str(POSTGRES_JDBC_JAR)]
    if POSTGRES_JDBC_JAR.exists()
    else []
)
ARGS = ["--pipeline", "user_events", "--start", "2026-11-22T00:00:00+00:00"]
NAME = "tributary-backfill-user_events"
# A closed range: ends more than the reconcile delay ago, starts within the hot retention.
END = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
START = END - timedelta(hours=2)


# ----------------------------------------------------------------------------------- the DAG


def backfill_dag_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tributary_backfill_dag", REPO_ROOT / "dags" / "tributary_backfill.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dag_params() -> Any:
    return backfill_dag_module().tributary_backfill().params


def resolved(params: Any, conf: Mapping[str, Any]) -> dict[str, Any]:
    """What a trigger with `conf` resolves to (ParamValidationError when Airflow would answer 400)."""
    merged = copy.deepcopy(params)
    merged.update(dict(conf))
    return dict(merged.validate())


VALID = {"pipeline": "user_events", "start": "2026-11-22T00:00:00.000Z", "end": "2026-11-23T00:00:00Z"}


def test_a_trigger_needs_only_the_range_and_gets_typed_defaults(dag_params: Any) -> None:
    assert resolved(dag_params, VALID) == {
        **VALID,
        "targets": ["summaries", "anomalies", "es", "alerts"],
        "dry_run": False,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"pipeline": "app_logs"},  # in the catalog, but without a backfill
        {"pipeline": "clicks"},
        {"start": "yesterday"},
        {"start": "2026-11-22T00:00:00"},  # no zone
        {"end": 1700000000},
        {"targets": ["summaries", "raw"]},
        {"targets": []},
        {"targets": ["es", "es"]},
        {"targets": "summaries"},
        {"dry_run": "yes"},
    ],
    ids=lambda bad: json.dumps(bad),
)
def test_bad_params_are_refused_before_anything_runs(dag_params: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(ParamValidationError):
        resolved(dag_params, {**VALID, **bad})


def test_a_range_is_required(dag_params: Any) -> None:
    with pytest.raises(ParamValidationError, match="start"):
        resolved(dag_params, {"pipeline": "user_events", "end": VALID["end"]})


def test_every_param_explains_itself_in_the_trigger_form(dag_params: Any) -> None:
    for name in ("pipeline", "start", "end", "targets", "dry_run"):
        param = dag_params.get_param(name)
        assert param.description and param.schema.get("title"), name
    assert dag_params.get_param("start").schema["format"] == "date-time"


# ------------------------------------------------------------------------------ spark-submit


def hook(master: str, **target: Any) -> SparkBatchHook:
    return SparkBatchHook(target=SparkTarget(master=master, **target))


def test_local_submit_runs_the_backfill_script_in_client_mode() -> None:
    argv = hook("local[2]", conf={"spark.driver.memory": "2g"}).submit_argv(USER_EVENTS, BACKFILL_SCRIPT, NAME, ARGS)
    assert argv == [
        SPARK_SUBMIT,
        "--master",
        "local[2]",
        "--deploy-mode",
        "client",
        "--name",
        NAME,
        *JARS,
        "--conf",
        "spark.driver.memory=2g",
        str(BACKFILL_SCRIPT),
        *ARGS,
    ]
    assert BACKFILL_SCRIPT.is_file()


def test_standalone_submit_ships_the_code_to_the_executors() -> None:
    argv = hook("spark://10.0.0.5:7077", py_files="/shared/code.zip").submit_argv(
        USER_EVENTS, BACKFILL_SCRIPT, NAME, ARGS
    )
    script = argv.index(str(BACKFILL_SCRIPT))
    assert argv[script + 1 :] == ARGS
    assert argv[script - 2 : script] == ["--py-files", "/shared/code.zip"]
    assert argv[argv.index("--name") + 1] == NAME and argv[argv.index("--master") + 1] == "spark://10.0.0.5:7077"
    assert not any(a.endswith("job.py") for a in argv)


def test_kubernetes_is_refused_without_retries() -> None:
    with pytest.raises(AirflowFailException, match="local\\[N\\] or spark:// master"):
        hook("k8s://https://10.0.0.1:6443", container_image="tributary:1").submit_argv(
            USER_EVENTS, BACKFILL_SCRIPT, NAME, ARGS
        )


# -------------------------------------------------------------------------------- execution


class FakeRun:
    """Stands in for spark-submit: prints `lines`, exits with `code`; records what it was given."""

    def __init__(self, lines: Sequence[str], code: int) -> None:
        self.lines, self.code = lines, code
        self.argv: list[str] = []
        self.env: dict[str, str] = {}

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], on_line: Callable[[str], None]) -> int:
        self.argv, self.env = list(argv), dict(env)
        for line in self.lines:
            on_line(line)
        return self.code


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> Callable[[Sequence[str], int], FakeRun]:
    def install(lines: Sequence[str], code: int) -> FakeRun:
        fake = FakeRun(lines, code)
        monkeypatch.setattr(SparkBatchHook, "target", SparkTarget(master="local[2]"))
        monkeypatch.setattr(SparkBatchHook, "run", lambda self, argv, env, on_line: fake(argv, env, on_line))
        monkeypatch.setattr(SparkBatchHook, "pg_url", lambda self: "postgresql://postgres@db.example:5432/tributary")
        return fake

    return install


def operator(**overrides: Any) -> BackfillOperator:
    fields: dict[str, Any] = {
        "pipeline": "user_events",
        "start": START.isoformat(),
        "end": END.isoformat(),
        "targets": ["summaries", "anomalies"],
        "is_dry_run": "False",
    }
    return BackfillOperator(task_id="backfill", **{**fields, **overrides})


def summary(state: str, **fields: Any) -> str:
    return json.dumps({"backfill": "user_events", "state": state, "rows_read": 1200, "written": 34, **fields})


def test_the_job_log_goes_to_the_task_log_and_its_summary_to_xcom(
    fake_run: Callable[[Sequence[str], int], FakeRun], capsys: pytest.CaptureFixture[str]
) -> None:
    progress = "INFO tributary.backfill: backfill user_events: read 600 rows (50% of 1,200); written: ..."
    fake = fake_run([progress, summary("succeeded")], 0)
    result = operator().execute({"run_id": "manual__2026-11-23"})
    assert result["state"] == "succeeded" and result["written"] == 34
    assert progress in capsys.readouterr().out, "the task's log (Airflow logs through structlog)"
    script = fake.argv.index(str(BACKFILL_SCRIPT))
    assert fake.argv[script + 1 :] == [
        "--pipeline",
        "user_events",
        "--start",
        START.isoformat(),
        "--end",
        END.isoformat(),
        "--targets",
        "summaries,anomalies",
        "--requested-by",
        f"airflow:{operator().dag_id}/manual__2026-11-23",
    ]
    assert fake.env["TRIBUTARY_PG_URL"] == "postgresql://postgres@db.example:5432/tributary"
    assert str(REPO_ROOT) in fake.env["PYTHONPATH"]


def test_a_dry_run_and_a_chunk_size_reach_the_job(fake_run: Callable[[Sequence[str], int], FakeRun]) -> None:
    fake = fake_run([summary("succeeded", dry_run=True)], 0)
    operator(is_dry_run=True, rows_per_chunk=1000).execute({"run_id": "r"})
    assert "--dry-run" in fake.argv and fake.argv[-2:] == ["--rows-per-chunk", "1000"]


def test_a_failed_job_fails_the_task_with_its_own_error(fake_run: Callable[[Sequence[str], int], FakeRun]) -> None:
    fake_run(["starting", summary("failed", error="SinkError: writing failed: disk full")], 1)
    with pytest.raises(AirflowException, match=r"exit code 1.*SinkError: writing failed: disk full"):
        operator().execute({"run_id": "r"})


def test_a_job_that_dies_without_a_summary_fails_with_its_last_lines(
    fake_run: Callable[[Sequence[str], int], FakeRun],
) -> None:
    fake_run(["Exception in thread main", "java.lang.OutOfMemoryError: Java heap space"], 137)
    with pytest.raises(AirflowException, match=r"(?s)exit code 137.*OutOfMemoryError"):
        operator().execute({"run_id": "r"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"start": "yesterday"}, "not an ISO 8601 instant"),
        ({"targets": ["raw"]}, "unknown backfill target"),
        ({"end": datetime.now(UTC).isoformat()}, "may still be writing"),
        ({"pipeline": "app_logs"}, "app_logs has no backfill yet"),
    ],
)
def test_an_invalid_request_fails_at_once_without_submitting(
    fake_run: Callable[[Sequence[str], int], FakeRun], overrides: dict[str, Any], message: str
) -> None:
    fake = fake_run([], 0)
    with pytest.raises(AirflowFailException, match=message):
        operator(**overrides).execute({"run_id": "r"})
    assert fake.argv == [], "nothing was submitted"


def test_the_dag_file_wires_the_params_into_the_operator() -> None:
    dag = backfill_dag_module().tributary_backfill()
    [task] = dag.tasks
    assert isinstance(task, BackfillOperator)
    assert (task.pipeline, task.start, task.end, task.targets, task.is_dry_run) == (
        "{{ params.pipeline }}",
        "{{ params.start }}",
        "{{ params.end }}",
        "{{ params.targets }}",
        "{{ params.dry_run }}",
    )
    assert dag.render_template_as_native_obj, "targets arrive as a list, dry_run as a boolean"
    assert Path(batch_operators.__file__).parent.name == "tributary_airflow"

from __future__ import annotations

import sys

from spark_jobs.session import POSTGRES_JDBC_JAR
from spark_jobs.submit import SPARK_SUBMIT, job_environment, job_script, submit_argv
from tributary.catalog import USER_EVENTS
from tributary.settings import REPO_ROOT


def test_the_job_script_follows_the_catalog_module() -> None:
    assert job_script(USER_EVENTS) == REPO_ROOT / "spark_jobs" / "user_events" / "job.py"
    assert job_script(USER_EVENTS).exists()


def test_submit_argv_is_exact() -> None:
    argv = submit_argv(USER_EVENTS, master="local[2]", job_args=["--no-es"], conf={"spark.ui.enabled": "false"})
    jars = (
        ["--jars", str(POSTGRES_JDBC_JAR), "--driver-class-path", str(POSTGRES_JDBC_JAR)]
        if POSTGRES_JDBC_JAR.exists()
        else []
    )
    assert argv == [
        SPARK_SUBMIT,
        "--master",
        "local[2]",
        "--deploy-mode",
        "client",
        "--name",
        "tributary-user_events",
        *jars,
        "--conf",
        "spark.ui.enabled=false",
        str(REPO_ROOT / "spark_jobs" / "user_events" / "job.py"),
        "--no-es",
    ]


def test_the_driver_runs_this_interpreter_with_the_repo_importable() -> None:
    env = job_environment({"PATH": "/usr/bin", "PYTHONPATH": "/extra"})
    assert env["PYSPARK_PYTHON"] == sys.executable
    assert env["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/extra"]
    assert job_environment({"PYSPARK_PYTHON": "/opt/py"})["PYSPARK_PYTHON"] == "/opt/py"

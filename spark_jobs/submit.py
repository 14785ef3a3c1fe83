"""How a Tributary streaming job is handed to `spark-submit`: its script, jars and environment.

One place for what every deploy mode needs, so the supervisor's backends and the tests start a job
the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from spark_jobs.session import POSTGRES_JDBC_JAR
from tributary.catalog import Pipeline
from tributary.settings import REPO_ROOT

SPARK_SUBMIT = str(Path(sys.executable).parent / "spark-submit")


def job_script(pipeline: Pipeline) -> Path:
    """The driver script of `pipeline`'s job (its catalog `job_module` + `.job`)."""
    return REPO_ROOT / pipeline.job_path


def submit_argv(
    pipeline: Pipeline,
    *,
    master: str,
    job_args: Sequence[str] = (),
    conf: Mapping[str, str] | None = None,
    deploy_mode: str = "client",
) -> list[str]:
    """The spark-submit command line that starts `pipeline`'s job."""
    argv = [SPARK_SUBMIT, "--master", master, "--deploy-mode", deploy_mode, "--name", f"tributary-{pipeline.name}"]
    if POSTGRES_JDBC_JAR.exists():
        # On the driver's class path from JVM start: `spark.jars` set later in the session
        # builder is too late for java.sql.DriverManager in a spark-submitted driver.
        argv += ["--jars", str(POSTGRES_JDBC_JAR), "--driver-class-path", str(POSTGRES_JDBC_JAR)]
    for key, value in (conf or {}).items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, str(job_script(pipeline)), *job_args]


def job_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a submitted driver: this interpreter for Python workers, the repo importable."""
    env = dict(os.environ if base is None else base)
    env["PYSPARK_PYTHON"] = env.get("PYSPARK_PYTHON") or sys.executable
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env

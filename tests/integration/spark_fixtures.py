"""A session-wide local SparkSession for integration tests (JVM start costs 6-8 s: one per run).

Wire it into a conftest with `from tests.integration.spark_fixtures import spark  # noqa: F401`,
or call `local_spark_session()` from a script.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from spark_jobs.session import build_session
from tributary.settings import REPO_ROOT

TEST_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    # Python workers must be this interpreter (pyspark, confluent-kafka, pyarrow), and must
    # import the repository's packages (`spark_jobs`) whatever the current directory is: the
    # editable install does not put the repository on sys.path of other processes.
    "spark.pyspark.python": sys.executable,
    "spark.pyspark.driver.python": sys.executable,
    "spark.executorEnv.PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
    "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
}


def local_spark_session(app_name: str = "tributary-tests") -> SparkSession:
    """A `local[2]` SparkSession with the project's base configuration and no UI.

    Sets PYSPARK_PYTHON for this process: the JVM inherits it, and the Python data source
    planner starts its workers from that variable, not from `spark.pyspark.python`.
    """
    os.environ["PYSPARK_PYTHON"] = sys.executable
    return build_session(app_name, master="local[2]", extra_conf=TEST_CONF)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One local SparkSession for the whole test session, stopped at the end."""
    session = local_spark_session()
    try:
        yield session
    finally:
        # Stop the state-store maintenance task first: run after SparkEnv is gone, it logs a
        # stack trace ("SparkEnv not active") after the test summary.
        state_store = getattr(session._jvm.org.apache.spark.sql.execution.streaming.state, "StateStore$")  # type: ignore[union-attr]
        getattr(state_store, "MODULE$").stop()
        session.stop()

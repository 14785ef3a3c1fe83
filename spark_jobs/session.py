"""SparkSession construction shared by every job and by the tests."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

# Debian's libpostgresql-jdbc-java; `make setup` installs it. Spark's JDBC reader needs it.
POSTGRES_JDBC_JAR = Path("/usr/share/java/postgresql.jar")

# Event time is UTC everywhere: windows, day partitions and the raw tables all agree on it.
BASE_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "4",
    # Streaming state is small (per user and window); RocksDB keeps it off the JVM heap and
    # makes checkpoints incremental.
    "spark.sql.streaming.stateStore.providerClass": (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    ),
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def build_session(app_name: str, master: str | None = None, extra_conf: dict[str, str] | None = None) -> SparkSession:
    """A SparkSession with Tributary's base configuration (`master` None: spark-submit decides)."""
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        # Keep a local driver on loopback (the host name may resolve elsewhere; nothing should
        # listen beyond 127.0.0.1 on a developer machine).
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    # py4j logs every connection at INFO, including from finalizers at interpreter exit, when
    # handlers may already be closed ("--- Logging error ---" after a clean run).
    logging.getLogger("py4j").setLevel(logging.WARNING)
    conf = dict(BASE_CONF)
    if "PYSPARK_PYTHON" not in os.environ:
        # Python workers (UDFs, and the planner's data-source workers, which read only the
        # environment) must run the driver's interpreter: the venv with pyarrow, confluent-kafka
        # and this project, not whatever `python3` is first on PATH. Set before the JVM starts.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    if POSTGRES_JDBC_JAR.exists():
        conf["spark.jars"] = str(POSTGRES_JDBC_JAR)
    for key, value in {**conf, **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands the Python driver its gateway port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ

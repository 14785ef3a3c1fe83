"""A Spark standalone cluster (one master, one worker) on loopback, started and stopped by PID.

For tests of the standalone deploy backend: the master and worker classes ship inside the
pyspark wheel, so no Spark distribution is needed.

    with standalone_cluster(tmp_path / "spark") as cluster:
        backend = StandaloneBackend(SparkTarget(master=cluster.master_url, ...))
        ...
        cluster.state()["completedapps"]
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyspark

from tributary.stack.errors import ComponentExitedError, HealthTimeoutError
from tributary.stack.ports import free_port
from tributary.stack.processes import PidFile, PidRecord, spawn, stop, tail

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class StandaloneCluster:
    """A running master and worker, their logs and the worker's directory of executor files."""

    master_url: str
    web_url: str
    master: PidRecord
    worker: PidRecord
    base_dir: Path

    @property
    def work_dir(self) -> Path:
        """Where the worker runs executors: `<work_dir>/<app id>/<executor id>/`."""
        return self.base_dir / "work"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "logs"

    def state(self) -> dict[str, Any]:
        """The master's JSON status page: workers, active and completed applications."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as response:
            state: dict[str, Any] = json.load(response)
        return state

    def logs(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {name} log:\n{tail(self.log_dir / f'{name}.log', lines)}" for name in ("master", "worker")
        )


def daemon_environment(base_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the master and worker: loopback only, every file under `base_dir`."""
    env = dict(os.environ if base is None else base)
    conf_dir = base_dir / "conf"  # empty: no spark-env.sh or spark-defaults.conf from elsewhere
    conf_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_CONF_DIR": str(conf_dir),
            # Every listener (RPC, web UI, executors' block managers) binds to loopback.
            "SPARK_LOCAL_IP": HOST,
            "SPARK_LOG_DIR": str(base_dir / "logs"),
            "SPARK_WORKER_DIR": str(base_dir / "work"),
            "SPARK_DAEMON_MEMORY": "256m",
            # The master's REST submission server would listen on the fixed port 6066; jobs are
            # submitted in client mode, so it is not needed.
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        }
    )
    return env


def start_standalone_cluster(
    base_dir: Path, *, cores: int = 1, memory: str = "1g", timeout_s: float = 90.0
) -> StandaloneCluster:
    """Start a master and one worker on free loopback ports; return once the worker is ALIVE.

    Stops both again (and raises with their logs) if the worker does not register in time.
    """
    base_dir.mkdir(parents=True, exist_ok=True)
    env = daemon_environment(base_dir)
    port, web_port, worker_web_port = free_port(HOST), free_port(HOST), free_port(HOST)
    master_url, web_url = f"spark://{HOST}:{port}", f"http://{HOST}:{web_port}"
    logs, run = base_dir / "logs", base_dir / "run"
    master = spawn(
        [str(SPARK_CLASS), MASTER_CLASS, "--host", HOST, "--port", str(port), "--webui-port", str(web_port)],
        log_path=logs / "master.log",
        pid_file=PidFile(run / "master.pid"),
        env=env,
        cwd=base_dir,
    )
    worker: PidRecord | None = None
    try:
        worker = spawn(
            [
                str(SPARK_CLASS),
                WORKER_CLASS,
                master_url,
                "--host",
                HOST,
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--webui-port",
                str(worker_web_port),
                "--work-dir",
                str(base_dir / "work"),
            ],
            log_path=logs / "worker.log",
            pid_file=PidFile(run / "worker.pid"),
            env=env,
            cwd=base_dir,
        )
        cluster = StandaloneCluster(master_url, web_url, master, worker, base_dir)
        _wait_worker_alive(cluster, timeout_s)
    except BaseException:
        for record in (worker, master):
            if record is not None:
                stop(record, timeout=10)
        raise
    return cluster


def stop_standalone_cluster(cluster: StandaloneCluster) -> None:
    """Stop the worker (and the executors it forked), then the master."""
    for record in (cluster.worker, cluster.master):
        stop(record, timeout=15)


@contextmanager
def standalone_cluster(base_dir: Path, *, cores: int = 1, memory: str = "1g") -> Iterator[StandaloneCluster]:
    cluster = start_standalone_cluster(base_dir, cores=cores, memory=memory)
    try:
        yield cluster
    finally:
        stop_standalone_cluster(cluster)


def _wait_worker_alive(cluster: StandaloneCluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "the master's web UI does not answer yet"
    while time.monotonic() < deadline:
        for name, record in (("master", cluster.master), ("worker", cluster.worker)):
            if not record.is_alive():
                raise ComponentExitedError(f"spark {name} exited during start-up\n{cluster.logs()}")
        try:
            workers = cluster.state().get("workers", [])
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = f"the master's web UI does not answer yet ({exc})"
        else:
            if any(w.get("state") == "ALIVE" for w in workers):
                return
            last = f"workers: {[w.get('state') for w in workers]}"
        time.sleep(0.5)
    raise HealthTimeoutError(f"no ALIVE worker at {cluster.web_url} within {timeout_s:.0f}s ({last})\n{cluster.logs()}")

"""Deploy backends: one class per Spark deploy mode, each with the same verbs.

The `tributary_spark` connection (conn_type `spark`) says where jobs run; its host is the Spark
master and its extra the deploy options:

    {"conf": {"spark.driver.host": "10.0.0.5"},           # extra --conf pairs (any mode)
     "namespace": "streaming",                            # Kubernetes
     "container_image": "registry/tributary-spark:1.4",   # Kubernetes (required there)
     "py_files": "hdfs:///tributary/code.zip"}            # standalone / Kubernetes (optional)

`backend_for` picks the backend by the master's form; nothing else branches on the mode:

    target = SparkTarget.from_connection(BaseHook.get_connection(SPARK_CONN_ID))
    backend = backend_for(target)
    submission = backend.submit(USER_EVENTS, ["--trigger-interval", "5"], env, log_dir)
    backend.is_active(submission)                   # later, from another process: Submission.from_json
    backend.kill(submission, grace_s=30)

- `LocalBackend` (`local`, `local[N]`, `local[*]`): spark-submit runs detached on this machine, in
  a session of its own, so it outlives the Airflow task that started it.
- `StandaloneBackend` (`spark://host:port`): the same detached driver in client mode (Python
  drivers cannot run in cluster mode on a standalone cluster), executors on the cluster; the job's
  code travels to the executors as a zip (`--py-files`).
- `KubernetesBackend` (`k8s://https://host:port`): cluster mode; the driver is a pod named by
  Tributary, queried and deleted with `spark-submit --status / --kill <namespace>:<pod>`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import re
import subprocess
import sys
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from spark_jobs import submit as spark_submit
from tributary.catalog import Pipeline
from tributary.drivers import driver_alive, start_detached, stop_driver
from tributary.settings import REPO_ROOT, SPARK_CONN_ID, load_settings

log = logging.getLogger(__name__)

MASTER_FORMS = (
    "local, local[N] or local[*] (driver and executors in one process on this machine), "
    "spark://host:port (a standalone cluster) or k8s://https://host:port (Kubernetes)"
)
# Where the Kubernetes image holds the repository (spark_jobs/, tributary/) and the JDBC driver.
IMAGE_CODE_ROOT = "/opt/tributary"
IMAGE_JDBC_JAR = "/usr/share/java/postgresql.jar"
# The packages the executors import; shipped to a standalone cluster as one zip.
CODE_PACKAGES = ("spark_jobs", "tributary")

K8S_SUBMIT_TIMEOUT_S = 300.0
K8S_QUERY_TIMEOUT_S = 120.0
# How long `kill` waits for a deleted driver pod to go, beyond its deletion grace period.
K8S_DELETE_SLACK_S = 30.0
K8S_ACTIVE_PHASES = frozenset({"pending", "running"})
# Settings of the Kubernetes client that `--status` and `--kill` need as much as `submit` does.
K8S_CLIENT_CONF_PREFIXES = ("spark.kubernetes.authenticate.", "spark.kubernetes.context")

# Connection extras this module reads (either spelling), and those of Airflow's Spark provider
# form that it ignores without a warning.
_EXTRA_KEYS = {"deploy_mode", "deploy-mode", "namespace", "container_image", "container-image", "conf"}
_EXTRA_KEYS |= {"py_files", "py-files"}
_PROVIDER_EXTRA_KEYS = {"queue", "spark-binary", "principal", "keytab", "rest-scheme", "rest-port"}

_LOCAL_MASTER = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------- target


@dataclass(frozen=True)
class SparkTarget:
    """Where jobs run: built from the Airflow connection SPARK_CONN_ID (conn_type spark)."""

    master: str  # "local[2]" | "spark://host:port" | "k8s://https://host:port"
    deploy_mode: str = "client"  # the Kubernetes backend forces "cluster"
    namespace: str = "default"  # Kubernetes
    container_image: str | None = None  # Kubernetes: required there
    conf: Mapping[str, str] = field(default_factory=dict)  # extra --conf pairs
    py_files: str | None = None  # standalone/Kubernetes: archive of the job code

    def __post_init__(self) -> None:
        if self.deploy_mode not in ("client", "cluster"):
            raise ValueError(
                f"deploy mode {self.deploy_mode!r} is not client or cluster; fix extra.deploy_mode "
                f"on the {SPARK_CONN_ID} connection"
            )

    @classmethod
    def from_connection(cls, conn: Any) -> SparkTarget:
        """The target an Airflow connection describes (`.host`, `.port`, `.extra_dejson`).

        The master is the host (`spark://h:7077`, `k8s://https://h:6443`, `local[2]`) plus the
        port when one is set (`host="spark://h", port=7077`); a bare host with a port means a
        standalone master, as in Airflow's Spark provider.
        """
        conn_id = getattr(conn, "conn_id", None) or SPARK_CONN_ID
        master = _master_of(conn_id, (conn.host or "").strip(), conn.port)
        extra: Mapping[str, Any] = conn.extra_dejson or {}
        unknown = sorted(k for k, v in extra.items() if k not in _EXTRA_KEYS | _PROVIDER_EXTRA_KEYS and v)
        if unknown:
            log.warning("connection %s: ignoring extra %s; Tributary reads %s", conn_id, unknown, sorted(_EXTRA_KEYS))
        conf = extra.get("conf") or {}
        if not isinstance(conf, Mapping):
            raise ValueError(
                f"connection {conn_id}: extra.conf is {type(conf).__name__}, not an object; set it to "
                'Spark properties, e.g. {"conf": {"spark.executor.memory": "2g"}}'
            )
        return cls(
            master=master,
            deploy_mode=str(_extra(extra, "deploy_mode", "deploy-mode") or "client"),
            namespace=str(extra.get("namespace") or "default"),
            container_image=_optional_str(_extra(extra, "container_image", "container-image")),
            conf={str(k): str(v) for k, v in conf.items()},
            py_files=_optional_str(_extra(extra, "py_files", "py-files")),
        )

    @classmethod
    def from_master(cls, master: str) -> SparkTarget:
        """A target with defaults for everything but the master (e.g. `settings.spark_master`)."""
        return cls(master=master)


def _extra(extra: Mapping[str, Any], *names: str) -> Any:
    return next((extra[n] for n in names if extra.get(n)), None)


def _optional_str(value: Any) -> str | None:
    return str(value) if value else None


def _master_of(conn_id: str, host: str, port: int | None) -> str:
    if not host:
        raise ValueError(f"connection {conn_id} has no host; set it to the Spark master: {MASTER_FORMS}")
    if _LOCAL_MASTER.fullmatch(host):
        if port:
            raise ValueError(f"connection {conn_id}: a {host} master takes no port; clear the port field")
        return host
    if "://" not in host:
        # Airflow's Spark provider reads a bare host with a port as a standalone master.
        return f"spark://{host}:{port}" if port else host
    if not port:
        return host
    # The port of the last address: `k8s://https://h:6443`, `spark://h1:7077,h2:7077`.
    authority = host.rsplit("://", 1)[1].split("/", 1)[0].rsplit(",", 1)[-1]
    has_port = re.search(r":(\d+)$", authority)
    if has_port is None:
        return f"{host.rstrip('/')}:{port}"
    if int(has_port.group(1)) != port:
        raise ValueError(
            f"connection {conn_id}: host {host} names port {has_port.group(1)} but the port field says "
            f"{port}; keep one of them"
        )
    return host


# ------------------------------------------------------------------------------ submission


@dataclass(frozen=True)
class Submission:
    """A submitted job: enough to find, query and stop it again from another process."""

    job_name: str
    deploy_mode: str  # the backend's name: "local" | "standalone" | "kubernetes"
    master: str
    argv: tuple[str, ...]
    pid: int | None = None  # local/standalone: the detached driver process (session leader)
    log_path: str | None = None
    driver_pod: str | None = None  # Kubernetes
    app_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_name": self.job_name,
            "deploy_mode": self.deploy_mode,
            "master": self.master,
            "argv": list(self.argv),
            "pid": self.pid,
            "log_path": self.log_path,
            "driver_pod": self.driver_pod,
            "app_id": self.app_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Submission:
        missing = [k for k in ("job_name", "deploy_mode", "master", "argv") if k not in data]
        if missing:
            raise ValueError(f"not a Submission: {missing} missing from {sorted(data)}")
        pid = data.get("pid")
        return cls(
            job_name=str(data["job_name"]),
            deploy_mode=str(data["deploy_mode"]),
            master=str(data["master"]),
            argv=tuple(str(a) for a in data["argv"]),
            pid=None if pid is None else int(pid),
            log_path=data.get("log_path"),
            driver_pod=data.get("driver_pod"),
            app_id=data.get("app_id"),
        )

    @property
    def main_file(self) -> str:
        return application_file(self.argv)


def application_file(argv: Sequence[str]) -> str:
    """The application file of a spark-submit command line (the first non-option argument)."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("--verbose", "-v", "--supervise"):
            i += 1
        elif arg.startswith("--"):
            i += 1 if "=" in arg else 2
        else:
            return arg
    raise ValueError(f"no application file in the spark-submit command {list(argv)}")


# -------------------------------------------------------------------------------- backends


class JobBackend(ABC):
    """Submits Tributary jobs to one kind of Spark master; same verbs in every backend."""

    name: ClassVar[str]

    def __init__(self, target: SparkTarget, *, clock: Clock = utc_now) -> None:
        self.target = target
        self.clock = clock
        self.check_target()

    @abstractmethod
    def check_target(self) -> None:
        """Raise ValueError (cause and fix) when this backend cannot run jobs on the target."""

    @abstractmethod
    def submit_argv(self, pipeline: Pipeline, job_args: Sequence[str] = ()) -> list[str]:
        """The spark-submit command that starts `pipeline`'s job."""

    @abstractmethod
    def submit(self, pipeline: Pipeline, job_args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Submission:
        """Start the job and return at once; `env` is added to this process's environment."""

    @abstractmethod
    def status(self, submission: Submission) -> str:
        """'running' | 'exited' | 'unknown' (Kubernetes: the driver pod's phase, lower-cased)."""

    @abstractmethod
    def is_active(self, submission: Submission) -> bool:
        """True while the job's driver runs."""

    @abstractmethod
    def kill(self, submission: Submission, grace_s: float = 30.0) -> None:
        """SIGTERM (the job stops at a batch boundary), SIGKILL after `grace_s`; fine if already gone.

        Returns once the driver is gone (Kubernetes: once the pod is, or after `grace_s` + 30 s).
        """

    def log_path(self, pipeline: Pipeline, log_dir: Path, at: datetime) -> Path:
        return log_dir / f"{pipeline.job_name}-{_utc(at):%Y%m%dT%H%M%SZ}.log"


class DetachedDriverBackend(JobBackend):
    """A driver that runs on this machine as a detached spark-submit process (local, standalone)."""

    def submit(self, pipeline: Pipeline, job_args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Submission:
        argv = self.submit_argv(pipeline, job_args)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(pipeline, log_dir, self.clock())
        environment = spark_submit.job_environment({**os.environ, **self.driver_environment(), **env})
        pid = start_detached(argv, environment, log_path, cwd=log_dir)
        log.info("%s: %s driver started, pid %d, log %s", pipeline.job_name, self.name, pid, log_path)
        return Submission(
            job_name=pipeline.job_name,
            deploy_mode=self.name,
            master=self.target.master,
            argv=tuple(argv),
            pid=pid,
            log_path=str(log_path),
        )

    def driver_environment(self) -> dict[str, str]:
        """Variables the backend adds to the driver's environment (the caller's `env` wins)."""
        return {}

    def status(self, submission: Submission) -> str:
        if submission.pid is None:
            return "unknown"
        return "running" if self.is_active(submission) else "exited"

    def is_active(self, submission: Submission) -> bool:
        return submission.pid is not None and driver_alive(submission.pid, submission.main_file)

    def kill(self, submission: Submission, grace_s: float = 30.0) -> None:
        if submission.pid is not None:
            stop_driver(submission.pid, submission.main_file, grace_s)


class LocalBackend(DetachedDriverBackend):
    """Master `local`, `local[N]`, `local[*]`: the whole job in one detached process here."""

    name = "local"

    def check_target(self) -> None:
        if not _LOCAL_MASTER.fullmatch(self.target.master):
            raise ValueError(f"{self.target.master!r} is not a local master (local, local[N], local[*])")
        if self.target.deploy_mode != "client":
            raise ValueError(
                f"a {self.target.master} master runs the driver here, in client mode; remove "
                f"extra.deploy_mode=cluster from the {SPARK_CONN_ID} connection"
            )

    def submit_argv(self, pipeline: Pipeline, job_args: Sequence[str] = ()) -> list[str]:
        return spark_submit.submit_argv(
            pipeline, master=self.target.master, job_args=job_args, conf=self.target.conf, deploy_mode="client"
        )

    def driver_environment(self) -> dict[str, str]:
        # The whole job runs on this machine: its driver, block manager and UI bind to loopback
        # (Spark binds its UI to SPARK_LOCAL_IP, else to every interface).
        return {"SPARK_LOCAL_IP": "127.0.0.1"}


class StandaloneBackend(DetachedDriverBackend):
    """Master `spark://host:port`: the driver detached here in client mode, executors on the cluster.

    Executors import `spark_jobs` and `tributary` from a zip of both packages (`--py-files`):
    `target.py_files` when set (e.g. a copy on shared storage), else one built into `code_dir`
    (default `<state_dir>/spark/code`). They run `spark.pyspark.python` (default: this
    interpreter, right for a cluster on this machine; set it in extra.conf to the workers' Python).
    """

    name = "standalone"

    def __init__(self, target: SparkTarget, *, code_dir: Path | None = None, clock: Clock = utc_now) -> None:
        super().__init__(target, clock=clock)
        self.code_dir = code_dir

    def check_target(self) -> None:
        if not self.target.master.startswith("spark://"):
            raise ValueError(f"{self.target.master!r} is not a standalone master (spark://host:port)")
        if self.target.deploy_mode != "client":
            raise ValueError(
                "a standalone cluster cannot run a Python driver in cluster deploy mode; remove "
                f"extra.deploy_mode=cluster from the {SPARK_CONN_ID} connection (the driver runs "
                "detached on the Airflow machine, the executors on the cluster)"
            )

    def conf(self) -> dict[str, str]:
        """Spark properties of a submission: the executors' Python, then the target's conf."""
        python = self.target.conf.get("spark.pyspark.python", sys.executable)
        return {
            "spark.pyspark.python": python,
            "spark.executorEnv.PYSPARK_PYTHON": python,
            # The driver runs here: keep it on this interpreter whatever the executors use.
            "spark.pyspark.driver.python": sys.executable,
            **self.target.conf,
        }

    def code_archive(self) -> str:
        if self.target.py_files:
            return self.target.py_files
        code_dir = self.code_dir or load_settings().state_dir / "spark" / "code"
        return str(build_code_archive(code_dir))

    def submit_argv(self, pipeline: Pipeline, job_args: Sequence[str] = ()) -> list[str]:
        argv = spark_submit.submit_argv(
            pipeline, master=self.target.master, job_args=job_args, conf=self.conf(), deploy_mode="client"
        )
        main_at = len(argv) - len(job_args) - 1
        return [*argv[:main_at], "--py-files", self.code_archive(), *argv[main_at:]]

    def find_app_id(self, submission: Submission) -> str | None:
        """The cluster's application id, once the driver has logged it (else None)."""
        if submission.log_path is None:
            return None
        try:
            with open(submission.log_path, "rb") as fh:
                # Logged while the session starts; a streaming driver's log grows without end.
                text = fh.read(4 * 1024 * 1024).decode(errors="replace")
        except FileNotFoundError:
            return None
        found = re.search(r"Connected to Spark cluster with app ID (app-[\w-]+)", text)
        return found.group(1) if found else None


class KubernetesBackend(JobBackend):
    """Master `k8s://https://host:port`: driver and executors are pods (cluster deploy mode).

    The image (extra.container_image) holds Spark, a Python with this project's dependencies, the
    repository under IMAGE_CODE_ROOT and the JDBC driver at IMAGE_JDBC_JAR. The driver pod gets
    the TRIBUTARY_* settings of `submit`'s environment as pod environment; keep secrets out of
    them with `spark.kubernetes.driver.secretKeyRef.<VAR>` in extra.conf, which takes precedence.
    """

    name = "kubernetes"

    def check_target(self) -> None:
        if not self.target.master.startswith("k8s://"):
            raise ValueError(f"{self.target.master!r} is not a Kubernetes master (k8s://https://host:port)")
        owned = {"spark.kubernetes.namespace", "spark.kubernetes.container.image", "spark.kubernetes.driver.pod.name"}
        clash = sorted(owned & set(self.target.conf))
        if clash:
            raise ValueError(
                f"extra.conf sets {clash}, which Tributary derives itself; use extra.namespace and "
                f"extra.container_image on the {SPARK_CONN_ID} connection instead"
            )

    @staticmethod
    def driver_pod_name(pipeline: Pipeline, at: datetime) -> str:
        """`tributary-<job>-<UTC time>`: a valid pod name (lower case, digits, dashes)."""
        job = re.sub(r"[^a-z0-9-]+", "-", pipeline.job_name.lower()).strip("-")
        return f"tributary-{job}-{_utc(at):%Y%m%d-%H%M%S}"

    @staticmethod
    def image_main_file(pipeline: Pipeline) -> str:
        return f"local://{IMAGE_CODE_ROOT}/{'/'.join(pipeline.job_module.split('.'))}/job.py"

    def conf(self, driver_pod: str) -> dict[str, str]:
        return {
            "spark.kubernetes.namespace": self.target.namespace,
            "spark.kubernetes.container.image": str(self.target.container_image),
            "spark.kubernetes.driver.pod.name": driver_pod,
            # spark-submit returns once the driver pod exists; `status` follows it from there.
            "spark.kubernetes.submission.waitAppCompletion": "false",
            "spark.kubernetes.driverEnv.PYTHONPATH": IMAGE_CODE_ROOT,
            "spark.executorEnv.PYTHONPATH": IMAGE_CODE_ROOT,
            **self.target.conf,
        }

    def submit_argv(self, pipeline: Pipeline, job_args: Sequence[str] = ()) -> list[str]:
        return self._argv(pipeline, job_args, self.driver_pod_name(pipeline, self.clock()), {})

    def _argv(
        self, pipeline: Pipeline, job_args: Sequence[str], driver_pod: str, driver_env: Mapping[str, str]
    ) -> list[str]:
        # Checked here, not in check_target: `status` and `kill` of a submission need no image.
        if not self.target.container_image:
            raise ValueError(
                "Kubernetes jobs need the image their pods run: set extra.container_image on the "
                f"{SPARK_CONN_ID} connection (Spark + Python + the repository under {IMAGE_CODE_ROOT})"
            )
        argv = [spark_submit.SPARK_SUBMIT, "--master", self.target.master, "--deploy-mode", "cluster"]
        argv += ["--name", f"tributary-{pipeline.name}"]
        argv += ["--jars", f"local://{IMAGE_JDBC_JAR}", "--driver-class-path", IMAGE_JDBC_JAR]
        conf = self.conf(driver_pod)
        conf.update({f"spark.kubernetes.driverEnv.{k}": v for k, v in driver_env.items()})
        for key, value in conf.items():
            argv += ["--conf", f"{key}={value}"]
        if self.target.py_files:
            argv += ["--py-files", self.target.py_files]
        return [*argv, self.image_main_file(pipeline), *job_args]

    def driver_environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The TRIBUTARY_* settings the driver pod gets, minus those extra.conf maps to secrets."""
        from_secrets = {
            key.rsplit(".", 1)[1]
            for key in self.target.conf
            if key.startswith(("spark.kubernetes.driver.secretKeyRef.", "spark.kubernetes.driverEnv."))
        }
        return {k: v for k, v in sorted(env.items()) if k.startswith("TRIBUTARY_") and k not in from_secrets}

    def submit(self, pipeline: Pipeline, job_args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Submission:
        at = self.clock()
        driver_pod = self.driver_pod_name(pipeline, at)
        full_env = {**os.environ, **env}
        argv = self._argv(pipeline, job_args, driver_pod, self.driver_environment(full_env))
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(pipeline, log_dir, at)
        shown = redact_argv(argv)
        with log_path.open("ab") as out:
            out.write(f"=== {_utc(at).isoformat()} submitting: {' '.join(shown)}\n".encode())
            out.flush()
            try:
                code = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    timeout=K8S_SUBMIT_TIMEOUT_S,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        if code != 0:
            ended = f"exited with {code}" if code is not None else f"did not return within {K8S_SUBMIT_TIMEOUT_S:.0f}s"
            raise RuntimeError(
                f"{pipeline.job_name}: spark-submit to {self.target.master} {ended}; check the master URL, the "
                f"credentials (extra.conf spark.kubernetes.authenticate.submission.*) and the image "
                f"{self.target.container_image}. Log {log_path}:\n{_tail(log_path)}"
            )
        log.info(
            "%s: driver pod %s/%s submitted, log %s", pipeline.job_name, self.target.namespace, driver_pod, log_path
        )
        return Submission(
            job_name=pipeline.job_name,
            deploy_mode=self.name,
            master=self.target.master,
            argv=tuple(shown),
            log_path=str(log_path),
            driver_pod=driver_pod,
        )

    def submission_id(self, submission: Submission) -> str:
        """`<namespace>:<driver pod>`, the namespace as submitted (the connection may differ now)."""
        if not submission.driver_pod:
            raise ValueError(f"{submission.job_name}: the submission names no driver pod: {submission.to_json()}")
        namespace = _conf_value(submission.argv, "spark.kubernetes.namespace") or self.target.namespace
        return f"{namespace}:{submission.driver_pod}"

    def _client_conf(self) -> list[str]:
        argv = []
        for key, value in self.target.conf.items():
            if key.startswith(K8S_CLIENT_CONF_PREFIXES):
                argv += ["--conf", f"{key}={value}"]
        return argv

    def status_argv(self, submission: Submission) -> list[str]:
        return [
            spark_submit.SPARK_SUBMIT,
            "--status",
            self.submission_id(submission),
            "--master",
            submission.master,
            *self._client_conf(),
        ]

    def kill_argv(self, submission: Submission, grace_s: float = 30.0) -> list[str]:
        return [
            spark_submit.SPARK_SUBMIT,
            "--kill",
            self.submission_id(submission),
            "--master",
            submission.master,
            "--conf",
            f"spark.kubernetes.appKillPodDeletionGracePeriod={math.ceil(grace_s)}s",
            *self._client_conf(),
        ]

    def status(self, submission: Submission) -> str:
        if not submission.driver_pod:
            return "unknown"
        code, output = _run(self.status_argv(submission), K8S_QUERY_TIMEOUT_S)
        if code != 0:
            log.warning("%s: spark-submit --status exited with %s:\n%s", submission.job_name, code, output[-2000:])
            return "unknown"
        return pod_phase(output)

    def is_active(self, submission: Submission) -> bool:
        return self.status(submission) in K8S_ACTIVE_PHASES

    def kill(self, submission: Submission, grace_s: float = 30.0) -> None:
        if not submission.driver_pod:
            return
        code, output = _run(self.kill_argv(submission, grace_s), K8S_QUERY_TIMEOUT_S)
        if code != 0:
            raise RuntimeError(
                f"{submission.job_name}: spark-submit --kill {self.submission_id(submission)} exited with {code}; "
                f"check the master URL and credentials (extra.conf spark.kubernetes.authenticate.submission.*):\n"
                f"{output[-2000:]}"
            )
        # Kubernetes deletes the pod asynchronously (SIGTERM, SIGKILL after the grace period).
        deadline = time.monotonic() + grace_s + K8S_DELETE_SLACK_S
        while self.is_active(submission):
            if time.monotonic() > deadline:
                log.warning(
                    "%s: driver pod %s still there %.0fs after its deletion",
                    submission.job_name,
                    submission.driver_pod,
                    grace_s + K8S_DELETE_SLACK_S,
                )
                return
            time.sleep(5.0)


def backend_for(target: SparkTarget) -> JobBackend:
    """The backend for `target`'s master; ValueError naming the accepted forms for any other."""
    master = target.master
    if _LOCAL_MASTER.fullmatch(master):
        return LocalBackend(target)
    if master.startswith("spark://"):
        return StandaloneBackend(target)
    if master.startswith("k8s://"):
        return KubernetesBackend(target)
    raise ValueError(
        f"unsupported Spark master {master!r}: use {MASTER_FORMS}; set it as the host of the {SPARK_CONN_ID} connection"
    )


# ------------------------------------------------------------------------------ code archive


def build_code_archive(dest_dir: Path, packages: Sequence[str] = CODE_PACKAGES, root: Path = REPO_ROOT) -> Path:
    """A zip of `packages` (source files, no bytecode) in `dest_dir`, named by its content hash.

    Byte-for-byte reproducible (sorted entries, fixed timestamps and modes), so the same sources
    give the same file, and any change to them gives a new one; an existing archive is reused.
    Old archives are kept: a running driver may still serve its archive to new executors.
    """
    files = sorted(
        path
        for package in packages
        for path in (root / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    )
    if not files:
        raise FileNotFoundError(f"no sources of {list(packages)} under {root}; is the checkout complete?")
    contents = [(path.relative_to(root).as_posix(), path.read_bytes()) for path in files]
    digest = hashlib.sha256()
    for name, data in contents:
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    archive = dest_dir / f"tributary-code-{digest.hexdigest()[:16]}.zip"
    if archive.exists():
        return archive
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".{archive.name}.{os.getpid()}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in contents:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    os.replace(tmp, archive)  # atomic: a concurrent submit sees the whole archive or none
    log.info("built %s (%d files of %s)", archive, len(contents), ", ".join(packages))
    return archive


# ----------------------------------------------------------------------------------- helpers


def pod_phase(status_output: str) -> str:
    """The driver pod's phase in `spark-submit --status` output, lower-cased.

    'exited' when the pod is gone ("Application not found."), 'unknown' when no phase is shown.
    """
    found = re.search(r"^\s*phase:\s*(\S+)", status_output, re.MULTILINE)
    if found and found.group(1) != "N/A":
        return found.group(1).lower()
    if "Application not found" in status_output:
        return "exited"
    return "unknown"


def redact_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with secrets masked: values of --conf keys naming a secret, passwords in URLs."""
    shown = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and _SECRET_NAME.search(key):
            shown.append(f"{key}=***")
        elif sep and "://" in value:
            shown.append(f"{key}={_redact_url(value)}")
        else:
            shown.append(arg)
    return shown


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def _conf_value(argv: Sequence[str], key: str) -> str | None:
    for before, arg in itertools.pairwise(argv):
        if before == "--conf" and arg.startswith(f"{key}="):
            return arg.partition("=")[2]
    return None


def _run(argv: Sequence[str], timeout_s: float) -> tuple[int | None, str]:
    """Exit code (None on timeout) and combined output; spark-submit reports on stderr."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        return None, f"no answer within {timeout_s:.0f}s: {exc}"
    return done.returncode, done.stdout + done.stderr


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)

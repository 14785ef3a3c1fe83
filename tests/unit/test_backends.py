"""Deploy backends: the exact spark-submit command of every mode, and the detached local driver.

Connections are built in fixtures (no metadata database); a fake spark-submit stands in for the
real one where a process is started, so no JVM runs here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.models import Connection

import spark_jobs.submit
from spark_jobs.session import POSTGRES_JDBC_JAR
from spark_jobs.submit import SPARK_SUBMIT
from tributary.catalog import USER_EVENTS
from tributary.settings import REPO_ROOT, SPARK_CONN_ID
from tributary_airflow.backends import (
    IMAGE_CODE_ROOT,
    KubernetesBackend,
    LocalBackend,
    SparkTarget,
    StandaloneBackend,
    Submission,
    backend_for,
    build_code_archive,
    pod_phase,
    redact_argv,
)

JOB = str(REPO_ROOT / "spark_jobs" / "user_events" / "job.py")
JARS = (
    ["--jars", str(POSTGRES_JDBC_JAR), "--driver-class-path", str(POSTGRES_JDBC_JAR)]
    if POSTGRES_JDBC_JAR.exists()
    else []
)
AT = datetime(2026, 11, 23, 13, 5, 9, tzinfo=UTC)
POD = "tributary-user-events-20261123-130509"
K8S_MASTER = "k8s://https://10.0.0.1:6443"


def clock() -> datetime:
    return AT


ConnectionFactory = Callable[..., Connection]


@pytest.fixture
def spark_connection() -> ConnectionFactory:
    """Builds the `tributary_spark` connection the way the UI or an AIRFLOW_CONN_* JSON would."""

    def build(host: str, port: int | None = None, **extra: Any) -> Connection:
        return Connection(
            conn_id=SPARK_CONN_ID, conn_type="spark", host=host, port=port, extra=json.dumps(extra) if extra else None
        )

    return build


# ------------------------------------------------------------------------------ connections


@pytest.mark.parametrize(
    ("host", "port", "master"),
    [
        ("local[2]", None, "local[2]"),
        ("local[*]", None, "local[*]"),
        ("spark://127.0.0.1", 7077, "spark://127.0.0.1:7077"),
        ("spark://spark-master:7077", None, "spark://spark-master:7077"),
        ("spark://spark-master:7077", 7077, "spark://spark-master:7077"),
        ("127.0.0.1", 7077, "spark://127.0.0.1:7077"),  # a bare host with a port: standalone
        ("k8s://https://10.0.0.1", 6443, K8S_MASTER),
        ("k8s://https://10.0.0.1:6443", None, K8S_MASTER),
    ],
)
def test_the_master_combines_host_and_port(
    spark_connection: ConnectionFactory, host: str, port: int | None, master: str
) -> None:
    assert SparkTarget.from_connection(spark_connection(host, port)).master == master


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("spark://spark-master:7077", 7078, "names port 7077 but the port field says 7078"),
        ("local[2]", 7077, "takes no port; clear the port field"),
        ("", None, "has no host; set it to the Spark master"),
    ],
)
def test_contradictory_or_missing_hosts_are_refused(
    spark_connection: ConnectionFactory, host: str, port: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SparkTarget.from_connection(spark_connection(host, port))


def test_the_extra_carries_the_deploy_options(spark_connection: ConnectionFactory) -> None:
    conn = spark_connection(
        "k8s://https://10.0.0.1",
        6443,
        namespace="streaming",
        container_image="registry.local/tributary-spark:1.4",
        conf={"spark.executor.instances": 2},
        py_files="local:///opt/tributary/code.zip",
        queue="",  # Airflow's Spark connection form saves its own (here empty) fields
    )
    assert SparkTarget.from_connection(conn) == SparkTarget(
        master=K8S_MASTER,
        namespace="streaming",
        container_image="registry.local/tributary-spark:1.4",
        conf={"spark.executor.instances": "2"},
        py_files="local:///opt/tributary/code.zip",
    )
    provider_spelling = spark_connection("spark://h:7077", **{"deploy-mode": "client", "container-image": "img"})
    assert SparkTarget.from_connection(provider_spelling).container_image == "img"


def test_a_conf_that_is_not_an_object_is_refused(spark_connection: ConnectionFactory) -> None:
    with pytest.raises(ValueError, match=r"extra.conf is str, not an object"):
        SparkTarget.from_connection(spark_connection("local[2]", conf="spark.ui.enabled=false"))
    with pytest.raises(ValueError, match="deploy mode 'server' is not client or cluster"):
        SparkTarget.from_connection(spark_connection("local[2]", deploy_mode="server"))


# ------------------------------------------------------------------------------ dispatch


@pytest.mark.parametrize(
    ("master", "backend"),
    [
        ("local", LocalBackend),
        ("local[2]", LocalBackend),
        ("local[*]", LocalBackend),
        ("spark://127.0.0.1:7077", StandaloneBackend),
        (K8S_MASTER, KubernetesBackend),
    ],
)
def test_backend_for_picks_by_the_master(master: str, backend: type) -> None:
    # From the master alone, as the hook does for a submission made under an older connection.
    assert type(backend_for(SparkTarget.from_master(master))) is backend


@pytest.mark.parametrize("master", ["yarn", "mesos://h:5050", "spark-master:7077", "local[two]"])
def test_an_unknown_master_names_the_accepted_forms(master: str) -> None:
    with pytest.raises(ValueError) as raised:
        backend_for(SparkTarget.from_master(master))
    message = str(raised.value)
    assert f"unsupported Spark master {master!r}" in message
    for form in ("local[N]", "spark://host:port", "k8s://https://host:port", SPARK_CONN_ID):
        assert form in message


def test_modes_a_backend_cannot_run_are_refused_with_the_fix() -> None:
    with pytest.raises(
        ValueError, match=re.escape("cannot run a Python driver in cluster deploy mode; remove extra.deploy_mode")
    ):
        StandaloneBackend(SparkTarget(master="spark://h:7077", deploy_mode="cluster"))
    with pytest.raises(ValueError, match="runs the driver here, in client mode"):
        LocalBackend(SparkTarget(master="local[2]", deploy_mode="cluster"))
    with pytest.raises(ValueError, match=re.escape(f"set extra.container_image on the {SPARK_CONN_ID} connection")):
        KubernetesBackend(SparkTarget(master=K8S_MASTER)).submit_argv(USER_EVENTS)
    with pytest.raises(ValueError, match=re.escape("use extra.namespace and extra.container_image")):
        KubernetesBackend(
            SparkTarget(master=K8S_MASTER, container_image="img", conf={"spark.kubernetes.namespace": "x"})
        )


# ------------------------------------------------------------------------------ argv


def test_local_argv_is_exact() -> None:
    backend = LocalBackend(SparkTarget(master="local[2]", conf={"spark.ui.enabled": "false"}))
    assert backend.submit_argv(USER_EVENTS, ["--no-es"]) == [
        SPARK_SUBMIT,
        "--master",
        "local[2]",
        "--deploy-mode",
        "client",
        "--name",
        "tributary-user_events",
        *JARS,
        "--conf",
        "spark.ui.enabled=false",
        JOB,
        "--no-es",
    ]


def test_standalone_argv_is_exact() -> None:
    target = SparkTarget(
        master="spark://127.0.0.1:7077", conf={"spark.driver.host": "127.0.0.1"}, py_files="/srv/tributary/code.zip"
    )
    assert StandaloneBackend(target).submit_argv(USER_EVENTS, ["--available-now", "--no-es"]) == [
        SPARK_SUBMIT,
        "--master",
        "spark://127.0.0.1:7077",
        "--deploy-mode",
        "client",
        "--name",
        "tributary-user_events",
        *JARS,
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        "--conf",
        f"spark.executorEnv.PYSPARK_PYTHON={sys.executable}",
        "--conf",
        f"spark.pyspark.driver.python={sys.executable}",
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--py-files",
        "/srv/tributary/code.zip",
        JOB,
        "--available-now",
        "--no-es",
    ]


def test_standalone_executors_python_comes_from_the_conf_and_the_code_is_zipped(tmp_path: Path) -> None:
    target = SparkTarget(master="spark://h:7077", conf={"spark.pyspark.python": "/opt/venv/bin/python"})
    argv = StandaloneBackend(target, code_dir=tmp_path).submit_argv(USER_EVENTS)
    confs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--conf"]
    assert confs == [
        "spark.pyspark.python=/opt/venv/bin/python",
        "spark.executorEnv.PYSPARK_PYTHON=/opt/venv/bin/python",
        f"spark.pyspark.driver.python={sys.executable}",
    ]
    archive = build_code_archive(tmp_path)
    assert argv[-3:] == ["--py-files", str(archive), JOB]
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert "spark_jobs/user_events/job.py" in names
    assert "tributary/catalog.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_code_archive_is_reproducible_and_follows_the_sources(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")

    first = build_code_archive(tmp_path / "a", ["pkg"], root)
    again = build_code_archive(tmp_path / "b", ["pkg"], root)
    assert first.name == again.name
    assert first.read_bytes() == again.read_bytes()
    assert build_code_archive(tmp_path / "a", ["pkg"], root) == first  # reused, not rebuilt

    (root / "pkg" / "mod.py").write_text("X = 2\n")
    changed = build_code_archive(tmp_path / "a", ["pkg"], root)
    assert changed != first
    with zipfile.ZipFile(changed) as zf:
        assert zf.namelist() == ["pkg/__init__.py", "pkg/mod.py"]
        assert zf.read("pkg/mod.py") == b"X = 2\n"


def kubernetes_backend(**conf: str) -> KubernetesBackend:
    target = SparkTarget(
        master=K8S_MASTER, namespace="streaming", container_image="registry.local/tributary-spark:1.4", conf=conf
    )
    return KubernetesBackend(target, clock=clock)


def test_kubernetes_argv_is_exact() -> None:
    backend = kubernetes_backend(**{"spark.executor.instances": "2"})
    assert backend.submit_argv(USER_EVENTS, ["--no-es"]) == [
        SPARK_SUBMIT,
        "--master",
        K8S_MASTER,
        "--deploy-mode",
        "cluster",
        "--name",
        "tributary-user_events",
        "--jars",
        "local:///usr/share/java/postgresql.jar",
        "--driver-class-path",
        "/usr/share/java/postgresql.jar",
        "--conf",
        "spark.kubernetes.namespace=streaming",
        "--conf",
        "spark.kubernetes.container.image=registry.local/tributary-spark:1.4",
        "--conf",
        f"spark.kubernetes.driver.pod.name={POD}",
        "--conf",
        "spark.kubernetes.submission.waitAppCompletion=false",
        "--conf",
        f"spark.kubernetes.driverEnv.PYTHONPATH={IMAGE_CODE_ROOT}",
        "--conf",
        f"spark.executorEnv.PYTHONPATH={IMAGE_CODE_ROOT}",
        "--conf",
        "spark.executor.instances=2",
        "local:///opt/tributary/spark_jobs/user_events/job.py",
        "--no-es",
    ]


def k8s_submission(namespace: str = "streaming") -> Submission:
    return Submission(
        job_name="user_events",
        deploy_mode="kubernetes",
        master=K8S_MASTER,
        argv=(SPARK_SUBMIT, "--conf", f"spark.kubernetes.namespace={namespace}", "local:///x/job.py"),
        driver_pod=POD,
    )


def test_kubernetes_status_and_kill_argv_are_exact() -> None:
    token = "spark.kubernetes.authenticate.submission.oauthToken=abc"
    backend = kubernetes_backend(**{"spark.kubernetes.authenticate.submission.oauthToken": "abc"})
    assert backend.status_argv(k8s_submission()) == [
        SPARK_SUBMIT,
        "--status",
        f"streaming:{POD}",
        "--master",
        K8S_MASTER,
        "--conf",
        token,
    ]
    assert backend.kill_argv(k8s_submission(), grace_s=12.5) == [
        SPARK_SUBMIT,
        "--kill",
        f"streaming:{POD}",
        "--master",
        K8S_MASTER,
        "--conf",
        "spark.kubernetes.appKillPodDeletionGracePeriod=13s",
        "--conf",
        token,
    ]
    # The namespace the pod was submitted to counts, not the connection's current one, and the
    # image is not needed to follow a submission.
    assert KubernetesBackend(SparkTarget.from_master(K8S_MASTER)).status_argv(k8s_submission("batch")) == [
        SPARK_SUBMIT,
        "--status",
        f"batch:{POD}",
        "--master",
        K8S_MASTER,
    ]


@pytest.mark.parametrize(
    ("output", "phase"),
    [
        (
            "Application status (driver): \n\t pod name: p-driver\n\t namespace: streaming\n\t phase: Running\n",
            "running",
        ),
        ("Application status (driver): \n\t pod name: p-driver\n\t phase: Pending\n", "pending"),
        ("Application status (driver): \n\t phase: Succeeded\n\t container status: \n", "succeeded"),
        (
            "Submitting a request for the status of submission streaming:p in k8s://...\nApplication not found.\n",
            "exited",
        ),
        ("\t phase: N/A\n", "unknown"),
        ("", "unknown"),
    ],
)
def test_the_pod_phase_is_read_from_the_status_output(output: str, phase: str) -> None:
    assert pod_phase(output) == phase


# ------------------------------------------------------------------------------ submissions


def test_a_submission_survives_a_json_round_trip() -> None:
    submission = Submission(
        job_name="user_events",
        deploy_mode="standalone",
        master="spark://127.0.0.1:7077",
        argv=(SPARK_SUBMIT, "--master", "spark://127.0.0.1:7077", JOB, "--no-es"),
        pid=4242,
        log_path="/state/logs/jobs/user_events-20261123T130509Z.log",
        app_id="app-20261123130511-0000",
    )
    assert Submission.from_json(json.loads(json.dumps(submission.to_json()))) == submission
    assert submission.main_file == JOB
    assert Submission.from_json(k8s_submission().to_json()) == k8s_submission()
    with pytest.raises(ValueError, match=r"not a Submission: \['argv'\] missing"):
        Submission.from_json({"job_name": "x", "deploy_mode": "local", "master": "local[2]"})


def test_secrets_are_masked_in_recorded_commands() -> None:
    assert redact_argv(
        [
            "--conf",
            "spark.kubernetes.driverEnv.TRIBUTARY_ES_PASSWORD=hunter2",
            "--conf",
            "spark.kubernetes.driverEnv.TRIBUTARY_PG_URL=postgresql://app:s3cret@db:5432/tributary",
            "--conf",
            "spark.kubernetes.driverEnv.TRIBUTARY_ES_URL=http://es:9200",
            "--master",
            K8S_MASTER,
        ]
    ) == [
        "--conf",
        "spark.kubernetes.driverEnv.TRIBUTARY_ES_PASSWORD=***",
        "--conf",
        "spark.kubernetes.driverEnv.TRIBUTARY_PG_URL=postgresql://app:***@db:5432/tributary",
        "--conf",
        "spark.kubernetes.driverEnv.TRIBUTARY_ES_URL=http://es:9200",
        "--master",
        K8S_MASTER,
    ]


# ------------------------------------------------------------------------------ Kubernetes verbs (fake spark-submit)


@pytest.fixture
def fake_spark_submit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A spark-submit that records its arguments and prints $FAKE_OUTPUT (to stderr, as Spark does)."""
    script = tmp_path / "spark-submit"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "with open(os.environ['FAKE_ARGS'], 'a') as fh:\n"
        "    fh.write(repr(sys.argv[1:]) + '\\n')\n"
        "sys.stderr.write(os.environ.get('FAKE_OUTPUT', ''))\n"
        "sys.exit(int(os.environ.get('FAKE_EXIT', '0')))\n"
    )
    script.chmod(0o755)
    monkeypatch.setattr(spark_jobs.submit, "SPARK_SUBMIT", str(script))
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "calls.txt"))
    return tmp_path / "calls.txt"


def recorded_calls(calls: Path) -> list[list[str]]:
    return [ast.literal_eval(line) for line in calls.read_text().splitlines()]


def test_kubernetes_submit_names_the_pod_and_hands_the_settings_to_it(
    fake_spark_submit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_OUTPUT", "pod created\n")
    backend = kubernetes_backend(**{"spark.kubernetes.driver.secretKeyRef.TRIBUTARY_ES_PASSWORD": "es:password"})
    env = {
        "TRIBUTARY_PG_URL": "postgresql://app:s3cret@db:5432/tributary",
        "TRIBUTARY_ES_PASSWORD": "hunter2",  # comes from the Kubernetes secret instead
        "TRIBUTARY_KAFKA_BOOTSTRAP": "kafka:9092",
    }
    submission = backend.submit(USER_EVENTS, ["--no-es"], env, tmp_path / "logs")

    assert submission.driver_pod == POD
    assert submission.log_path == str(tmp_path / "logs" / "user_events-20261123T130509Z.log")
    (ran,) = recorded_calls(fake_spark_submit)
    forwarded = [a for a in ran if a.startswith("spark.kubernetes.driverEnv.TRIBUTARY_")]
    assert forwarded == [
        "spark.kubernetes.driverEnv.TRIBUTARY_KAFKA_BOOTSTRAP=kafka:9092",
        "spark.kubernetes.driverEnv.TRIBUTARY_PG_URL=postgresql://app:s3cret@db:5432/tributary",
    ]
    assert ran[-2:] == ["local:///opt/tributary/spark_jobs/user_events/job.py", "--no-es"]
    assert "s3cret" not in " ".join(submission.argv), "the recorded command carries no password"
    assert "pod created" in Path(submission.log_path).read_text()


def test_kubernetes_submit_failure_shows_the_log(
    fake_spark_submit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_OUTPUT", "Forbidden: User cannot create pods\n")
    monkeypatch.setenv("FAKE_EXIT", "1")
    with pytest.raises(RuntimeError, match=r"(?s)exited with 1; check the master URL.*cannot create pods"):
        kubernetes_backend().submit(USER_EVENTS, [], {}, tmp_path)


def test_kubernetes_status_and_kill_go_through_spark_submit(
    fake_spark_submit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = kubernetes_backend()
    monkeypatch.setenv("FAKE_OUTPUT", "Application status (driver): \n\t phase: Running\n")
    assert backend.status(k8s_submission()) == "running"
    assert backend.is_active(k8s_submission())

    monkeypatch.setenv("FAKE_OUTPUT", "Application not found.\n")
    backend.kill(k8s_submission(), grace_s=5)  # already gone: no error, no wait
    calls = recorded_calls(fake_spark_submit)
    assert calls[-2][:2] == ["--kill", f"streaming:{POD}"]
    assert calls[-1][:2] == ["--status", f"streaming:{POD}"]

    monkeypatch.setenv("FAKE_EXIT", "1")
    assert backend.status(k8s_submission()) == "unknown"
    with pytest.raises(RuntimeError, match=r"spark-submit --kill streaming:\S+ exited with 1; check the master URL"):
        backend.kill(k8s_submission())


# ------------------------------------------------------------------------------ detached local driver

GRACEFUL_JOB = """\
import os, signal, sys, time
def stop(*_):
    print("stopping at a batch boundary", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("running", sys.argv[1:], "TRIBUTARY_MARK=" + os.environ.get("TRIBUTARY_MARK", ""), flush=True)
while True:
    time.sleep(0.1)
"""

STUBBORN_JOB = """\
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("running", sys.argv[1:], flush=True)
while True:
    time.sleep(0.1)
"""

# Parent process: submits, prints the submission and exits (as the Airflow task does).
SUBMITTING_TASK = """\
import json, sys
from pathlib import Path
import spark_jobs.submit
spark_jobs.submit.SPARK_SUBMIT = sys.argv[1]
spark_jobs.submit.job_script = lambda pipeline: Path(sys.argv[2])
from tributary.catalog import USER_EVENTS
from tributary_airflow.backends import LocalBackend, SparkTarget
backend = LocalBackend(SparkTarget(master="local[1]"))
submission = backend.submit(USER_EVENTS, ["--no-es"], {"TRIBUTARY_MARK": "42"}, Path(sys.argv[3]))
print(json.dumps(submission.to_json()))
"""


@pytest.fixture
def fake_driver(tmp_path: Path) -> Callable[[str], tuple[Path, Path]]:
    """(spark-submit stand-in, job script): the stand-in skips the options and execs the script."""
    launcher = tmp_path / "spark-submit"
    launcher.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do case "$1" in --*) shift 2 ;; *) break ;; esac; done\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    launcher.chmod(0o755)

    def make(source: str) -> tuple[Path, Path]:
        script = tmp_path / f"job_{abs(hash(source))}.py"
        script.write_text(source)
        return launcher, script

    return make


def wait_for_log(path: str | None, text: str, timeout_s: float = 20.0) -> str:
    assert path is not None
    deadline = time.monotonic() + timeout_s
    content = ""
    while time.monotonic() < deadline:
        content = Path(path).read_text(errors="replace") if Path(path).exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout_s}s:\n{content}")


@pytest.fixture
def reap_leftovers() -> Iterator[list[int]]:
    """Process groups a failed test may leave behind; SIGKILLed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def test_a_local_driver_outlives_its_submitter_and_stops_at_a_batch_boundary(
    fake_driver: Callable[[str], tuple[Path, Path]], tmp_path: Path, reap_leftovers: list[int]
) -> None:
    launcher, script = fake_driver(GRACEFUL_JOB)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")])}
    task = subprocess.run(
        [sys.executable, "-c", SUBMITTING_TASK, str(launcher), str(script), str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    submission = Submission.from_json(json.loads(task.stdout.splitlines()[-1]))
    assert submission.pid is not None
    reap_leftovers.append(submission.pid)
    assert submission.deploy_mode == "local"
    assert submission.main_file == str(script)
    assert Path(submission.log_path or "").name.startswith("user_events-")

    # The submitting process has exited; the driver runs on, leading a session of its own.
    log = wait_for_log(submission.log_path, "running")
    assert "['--no-es']" in log
    assert "TRIBUTARY_MARK=42" in log
    assert os.getsid(submission.pid) == submission.pid
    assert os.getpgid(submission.pid) == submission.pid
    backend = LocalBackend(SparkTarget(master="local[1]"))
    assert backend.is_active(submission)
    assert backend.status(submission) == "running"

    started = time.monotonic()
    backend.kill(submission, grace_s=20)
    assert time.monotonic() - started < 10, "a driver that stops on SIGTERM is not waited for"
    assert "stopping at a batch boundary" in wait_for_log(submission.log_path, "stopping")
    assert not backend.is_active(submission)
    assert backend.status(submission) == "exited"
    backend.kill(submission, grace_s=1)  # already gone: no error


def test_a_driver_ignoring_sigterm_is_killed_after_the_grace_period(
    fake_driver: Callable[[str], tuple[Path, Path]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reap_leftovers: list[int],
) -> None:
    launcher, script = fake_driver(STUBBORN_JOB)
    monkeypatch.setattr(spark_jobs.submit, "SPARK_SUBMIT", str(launcher))
    monkeypatch.setattr(spark_jobs.submit, "job_script", lambda pipeline: script)
    backend = LocalBackend(SparkTarget(master="local[1]"), clock=clock)
    submission = backend.submit(USER_EVENTS, [], {}, tmp_path / "logs")
    assert submission.pid is not None
    reap_leftovers.append(submission.pid)
    assert submission.log_path == str(tmp_path / "logs" / "user_events-20261123T130509Z.log")
    wait_for_log(submission.log_path, "running")
    assert backend.is_active(submission)

    started = time.monotonic()
    backend.kill(submission, grace_s=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 8, elapsed
    assert not backend.is_active(submission)
    assert not Path(f"/proc/{submission.pid}").exists(), "our own child is reaped, not left a zombie"


def test_a_reused_pid_is_neither_active_nor_killed(reap_leftovers: list[int]) -> None:
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    reap_leftovers.append(stranger.pid)
    try:
        submission = Submission(
            job_name="user_events",
            deploy_mode="local",
            master="local[2]",
            argv=(SPARK_SUBMIT, "--master", "local[2]", JOB),
            pid=stranger.pid,
        )
        backend = LocalBackend(SparkTarget(master="local[2]"))
        assert not backend.is_active(submission)
        assert backend.status(submission) == "exited"
        backend.kill(submission, grace_s=0.5)
        time.sleep(0.2)
        assert stranger.poll() is None, "a process that does not run the job script is never signalled"
    finally:
        stranger.kill()
        stranger.wait()

"""PostgreSQL: use the server at `pg_url`, or run a private cluster on loopback; create databases.

The private cluster lives in `state_dir/postgres` and is run by the `postgres` user (initdb
refuses to run as root), with trust authentication, listening on the host and port of `pg_url`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tributary.clients import pg_connect
from tributary.settings import Endpoint, load_settings
from tributary.stack.component import Component, ComponentStatus, State
from tributary.stack.errors import BinaryMissingError, StackError, UnreachableError
from tributary.stack.health import Unhealthy, wait_healthy
from tributary.stack.ports import ensure_port_free, free_port
from tributary.stack.processes import PidRecord, read_proc_stat

MAINTENANCE_DB = "postgres"
PG_BIN_ROOT = Path("/usr/lib/postgresql")
PG_SERVICE_USER = "postgres"


def database_url(url: str, dbname: str) -> str:
    """`url` with its database replaced by `dbname` (user, host, port and options kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def database_name(url: str) -> str:
    """The database a PostgreSQL URL names; raises ValueError when it names none."""
    name = unquote(urlsplit(url).path.lstrip("/"))
    if not name:
        raise ValueError(f"{redact_url(url)} names no database: expected postgresql://user@host:port/dbname")
    return name


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def server_answers(url: str, timeout: int = 2) -> str | None:
    """None when the server of `url` accepts a connection to its maintenance DB, else the reason."""
    try:
        with pg_connect(database_url(url, MAINTENANCE_DB), connect_timeout=timeout):
            return None
    except psycopg.OperationalError as exc:
        return str(exc).strip()


def ensure_database(url: str) -> bool:
    """Create the database `url` names if it does not exist; True when it was created."""
    name = database_name(url)
    with pg_connect(database_url(url, MAINTENANCE_DB), autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created concurrently by another `up`/test: that is what we wanted
    return True


def drop_database(url: str) -> None:
    """Drop the database `url` names, disconnecting its sessions (`WITH (FORCE)`)."""
    name = database_name(url)
    with pg_connect(database_url(url, MAINTENANCE_DB), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pg_bin_dir() -> Path:
    """Debian's directory of PostgreSQL server binaries, newest major version first."""
    candidates = sorted(
        PG_BIN_ROOT.glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    if not candidates:
        raise BinaryMissingError(
            f"postgres: no server binaries under {PG_BIN_ROOT}/<version>/bin: "
            "`apt-get install postgresql-15`, or point TRIBUTARY_PG_URL at a running server"
        )
    return candidates[0].parent


class PostgresServer(Component):
    """The PostgreSQL server of `pg_url`: external if it answers, else our private cluster."""

    name = "postgres"
    health_timeout = 30.0
    _state: State | None = None  # what `launch` found or did, for `await_ready` to report

    @property
    def endpoint_text(self) -> str:
        return redact_url(self.settings.pg_url)

    @property
    def data_dir(self) -> Path:
        return self.paths.postgres_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.paths.postgres_dir / "run"

    def needs_start(self) -> bool:
        return self.pid_file.live() is None and server_answers(self.settings.pg_url) is not None

    def launch(self) -> None:
        self._state = None
        if self.pid_file.live() is not None:
            self._state = State.ALREADY_RUNNING
            return
        reason = server_answers(self.settings.pg_url)
        if reason is None:
            self._state = State.EXTERNAL
            return
        endpoint = self.settings.pg_endpoint
        if not endpoint.is_loopback:
            raise UnreachableError(
                f"postgres: no PostgreSQL server answers at {redact_url(self.settings.pg_url)} "
                f"({reason}); start it, or set {endpoint.setting} to a reachable server"
            )
        ensure_port_free(self.name, endpoint, self.log_path)
        self._start_private_cluster()
        self._state = State.STARTED

    def await_ready(self) -> ComponentStatus:
        if self._state is None:
            raise StackError("postgres: await_ready() called before launch()")
        record = self.pid_file.live()

        def probe() -> None:
            reason = server_answers(self.settings.pg_url)
            if reason is not None:
                raise Unhealthy(reason)

        wait_healthy(
            self.name,
            probe,
            timeout=self.health_timeout,
            log_path=self.log_path if record else None,
            process=record,
            progress=self.progress,
        )
        for url in (self.settings.pg_url, self.settings.airflow_db_url):
            try:
                created = ensure_database(url)
            except psycopg.Error as exc:
                raise StackError(
                    f"postgres: could not make sure database {database_name(url)} exists at "
                    f"{redact_url(url)}: {str(exc).strip()}; create it yourself, or give that user "
                    "CREATEDB (setting: TRIBUTARY_PG_URL / TRIBUTARY_AIRFLOW_DB_URL)"
                ) from exc
            if created and self.progress:
                self.progress(f"postgres: created database {database_name(url)}")
        return self._status(self._state, record.pid if record else None)

    def status(self) -> ComponentStatus:
        record = self.pid_file.live()
        reason = server_answers(self.settings.pg_url)
        if record is not None:
            state = State.RUNNING if reason is None else State.UNHEALTHY
            return self._status(state, record.pid, reason or "")
        if reason is None:
            return self._status(State.EXTERNAL)
        if self.settings.pg_endpoint.is_loopback:
            return self._status(State.STOPPED)  # `up` starts the private cluster here
        return self._status(State.UNREACHABLE, detail=reason)

    def down(self) -> ComponentStatus:
        record = self.pid_file.live()
        if record is None:
            state = State.EXTERNAL if server_answers(self.settings.pg_url) is None else State.STOPPED
            return self._status(state)
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
        self.pid_file.remove()
        return self._status(State.STOPPED, record.pid)

    # -- the private cluster ------------------------------------------------------------------

    def _start_private_cluster(self) -> None:
        endpoint = self.settings.pg_endpoint
        bin_dir = pg_bin_dir()
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            if self.progress:
                self.progress(f"postgres: initialising a private cluster in {self.data_dir}")
            user = unquote(urlsplit(self.settings.pg_url).username or PG_SERVICE_USER)
            self._run_as_service_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    user,
                    "-E",
                    "UTF8",
                    "--auth-local=trust",
                    "--auth-host=trust",
                    "--no-instructions",
                ]
            )
        host = "127.0.0.1" if endpoint.host == "localhost" else endpoint.host
        options = f"-c listen_addresses={host} -c port={endpoint.port} -c unix_socket_directories={self.socket_dir}"
        self._pg_ctl("start", "-w", "-t", str(int(self.health_timeout)), "-l", str(self.log_path), "-o", options)
        postmaster_pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        stat = read_proc_stat(postmaster_pid)
        if stat is None:
            raise StackError(
                f"postgres: the postmaster (pid {postmaster_pid}) exited right after starting; see {self.log_path}"
            )
        self.pid_file.write(PidRecord(postmaster_pid, stat.start_ticks, ("postgres", "-D", str(self.data_dir))))

    def _prepare_dirs(self) -> None:
        """Directories the `postgres` user owns, reachable through every parent directory."""
        for directory in (self.paths.postgres_dir, self.data_dir, self.socket_dir, self.paths.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        if os.geteuid() != 0:
            return  # not root: initdb and postgres run as the current user, who owns all of it
        service = pwd.getpwnam(PG_SERVICE_USER)
        for path in (self.paths.postgres_dir, self.data_dir, self.socket_dir, self.log_path):
            os.chown(path, service.pw_uid, service.pw_gid)
        self.data_dir.chmod(0o700)
        for parent in self.paths.postgres_dir.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise StackError(
                    f"postgres: the {PG_SERVICE_USER} user cannot enter {parent} (mode "
                    f"{parent.stat().st_mode & 0o777:o}), so it cannot run a cluster in "
                    f"{self.data_dir}; set TRIBUTARY_STATE_DIR to a directory outside {parent}"
                )

    def _pg_ctl(self, *args: str) -> None:
        self._run_as_service_user([str(pg_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), *args])

    def _run_as_service_user(self, argv: list[str]) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", PG_SERVICE_USER, "--", *argv]
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            # pg_ctl's postmaster inherits this session: keep it out of the
            # CLI's terminal session so Ctrl-C there does not stop it.
            start_new_session=True,
        )
        if result.returncode != 0:
            raise StackError(
                f"postgres: `{' '.join(argv)}` failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()}\nsee also {self.log_path}"
            )


@contextmanager
def scratch_server(configured: str | None, default: str, *, setting: str) -> Iterator[str]:
    """The maintenance-database URL of a PostgreSQL server to make throwaway databases on.

    The server of `configured` (the value of `setting`, or `default` when unset) when it answers;
    otherwise a private cluster on a free loopback port in a temporary directory, stopped and
    removed on the way out. Tests and benchmarks use it, so neither needs a server running first.
    """
    url = database_url(configured or default, MAINTENANCE_DB)
    reason = server_answers(url, timeout=3)
    if reason is None:
        yield url
        return
    if configured and not Endpoint(urlsplit(url).hostname or "", 0, setting).is_loopback:
        raise UnreachableError(
            f"PostgreSQL at {redact_url(url)} ({setting}) does not answer ({reason}); start it, or unset "
            f"{setting} to have a private cluster started"
        )
    # The `postgres` user runs the cluster: its directory must be reachable for that user.
    root = Path(tempfile.mkdtemp(prefix="tributary-scratch-pg-"))
    root.chmod(0o755)
    private = f"postgresql://{PG_SERVICE_USER}@127.0.0.1:{free_port()}/{MAINTENANCE_DB}"
    server = PostgresServer(
        replace(load_settings(), state_dir=root, pg_url=private, airflow_db_url=private), progress=None
    )
    try:
        server.up()
        yield private
    finally:
        try:
            server.down()
        finally:
            shutil.rmtree(root, ignore_errors=True)

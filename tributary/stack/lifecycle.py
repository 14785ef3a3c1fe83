"""`up`, `down` and `status` of the whole stack, in dependency order.

Order: PostgreSQL (Airflow's metadata lives there), the Kafka broker, the ES-API server, then
Airflow's four processes. Processes that do not depend on each other are launched before any of
them is waited on, so their start-up times overlap.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from tributary.settings import Settings
from tributary.stack.airflow import AIRFLOW_COMPONENTS, migrate_metadata_db
from tributary.stack.broker import KafkaBroker
from tributary.stack.component import Component, ComponentStatus, print_progress
from tributary.stack.errors import StackError
from tributary.stack.health import Progress
from tributary.stack.paths import StatePaths
from tributary.stack.postgres import PostgresServer
from tributary.stack.producer import demo_producers
from tributary.stack.search import OsmemSearch


def stack_components(settings: Settings, progress: Progress | None = print_progress) -> list[Component]:
    """Every component of the stack, in start order."""
    return [
        PostgresServer(settings, progress),
        KafkaBroker(settings, progress),
        OsmemSearch(settings, progress),
        *(cls(settings, progress) for cls in AIRFLOW_COMPONENTS),
    ]


def up(settings: Settings, progress: Progress | None = print_progress) -> list[ComponentStatus]:
    """Start whatever is not running and wait until every component is healthy.

    Raises StackError at the first component that cannot start (a component that fails its
    health wait is stopped again). Components started before it keep running, so a second `up`
    after fixing the cause picks up from there; the message says which they are.
    """
    with _exclusive(settings, "up"):
        return _up(settings, progress)


def _up(settings: Settings, progress: Progress | None) -> list[ComponentStatus]:
    postgres, kafka, search, *airflow = stack_components(settings, progress)
    started: list[Component] = []
    current: Component | None = postgres  # the one that failed, if any; None: no component's fault
    results: list[ComponentStatus] = []
    try:
        if postgres.needs_start():
            started.append(postgres)
        results.append(_report(postgres.up(), progress))
        for batch in ([kafka, search], airflow):
            if batch is airflow and any(c.needs_start() for c in airflow):
                current = None
                migrate_metadata_db(settings, progress)
            for current in batch:
                starts = current.needs_start()
                current.launch()
                if starts:
                    started.append(current)
            for current in batch:
                results.append(_report(current.await_ready(), progress))
    except StackError as exc:
        still_running = [c.name for c in started if c is not current]
        if still_running:
            raise StackError(
                f"{exc}\nstarted before the failure and still running: {', '.join(still_running)} "
                "(`tributary down` stops them; `tributary up` again reuses them)"
            ) from exc
        raise
    return results


def down(settings: Settings, progress: Progress | None = print_progress) -> list[ComponentStatus]:
    """Stop every process recorded in our PID files, Airflow first; harmless when none runs.

    Every component gets its stop attempt even if another one fails; the failures are raised
    together at the end.
    """
    with _exclusive(settings, "down"):
        return _down(settings, progress)


def _down(settings: Settings, progress: Progress | None) -> list[ComponentStatus]:
    from tributary.platform import stop_jobs

    components = stack_components(settings, progress)
    postgres, kafka, search, *airflow = components
    producers = demo_producers(settings, progress)
    errors: list[str] = []
    results: dict[str, ComponentStatus] = {}

    def stop(component: Component) -> None:
        try:
            results[component.name] = _report(component.down(), progress)
        except (StackError, RuntimeError, OSError) as exc:
            errors.append(f"{component.name}: {exc}")

    for producer in producers:
        stop(producer)
    # Airflow's processes shut down independently; stopping them together saves their grace periods.
    with ThreadPoolExecutor(max_workers=len(airflow)) as pool:
        list(pool.map(stop, airflow))
    # The streaming drivers after Airflow (its supervisor would restart them), before their services.
    try:
        stop_jobs(settings, progress)
    except (StackError, RuntimeError, OSError) as exc:
        errors.append(f"streaming jobs: {exc}")
    for component in (search, kafka, postgres):
        stop(component)
    if errors:
        raise StackError("could not stop everything:\n" + "\n".join(errors))
    return [results[c.name] for c in [*producers, *components]]


def status(settings: Settings) -> list[ComponentStatus]:
    """The state of every component, changing nothing (stale PID files aside)."""
    components = [*stack_components(settings, progress=None), *demo_producers(settings, progress=None)]
    return [component.status() for component in components]


@contextmanager
def _exclusive(settings: Settings, action: str) -> Iterator[None]:
    """Hold the stack lock of the state dir: two `up`/`down` at once would race on PID files."""
    lock_path = StatePaths(settings.state_dir).run_dir / "stack.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(
                f"another `tributary up` or `down` is running on {settings.state_dir}; "
                f"wait for it to finish, then run `tributary {action}` again"
            ) from None
        yield  # the lock goes with the file descriptor


def _report(result: ComponentStatus, progress: Progress | None) -> ComponentStatus:
    if progress:
        pid = f" (pid {result.pid})" if result.pid else ""
        progress(f"{result.name}: {result.state}{pid}")
    return result

"""`tributary` command line: run the embedded stack, bootstrap it, produce demo traffic.

Adding a subcommand is one function `(args, settings) -> exit code`, whose docstring's first line
is its help, plus one entry in COMMANDS (and, if it takes options, one in ARGUMENTS).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tributary import bootstrap, stack
from tributary.airflow_env import admin_password, passwords_file
from tributary.bootstrap import StepReport
from tributary.catalog import APP_LOGS, PIPELINES, USER_EVENTS, WEATHER, get_pipeline
from tributary.clients import es_client, kafka_admin, kafka_config, pg_connect
from tributary.provisioning import ProvisioningError
from tributary.settings import Settings, load_settings

if TYPE_CHECKING:
    from tributary.producers.user_events import GeneratedEvent, ProduceReport
from tributary.stack.report import render_table, status_table

Command = Callable[[argparse.Namespace, Settings], int]


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the embedded platform, bootstrap it, start the streaming jobs and a demo producer."""
    started = time.monotonic()
    try:
        statuses = stack.up(settings)
        if not args.stack_only:
            from tributary import platform
            from tributary.airflow_api import AirflowApiError
            from tributary.stack.producer import demo_producers

            try:
                platform.start(settings, print)
            except AirflowApiError as exc:
                raise stack.StackError(f"platform start: {exc}") from exc
            statuses = [*statuses, *(producer.up() for producer in demo_producers(settings))]
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print(status_table(statuses))
    print()
    print(f"Airflow UI: {settings.airflow_url}")
    password = admin_password(settings)
    if password is None:
        print(f"Airflow login: {settings.airflow_user} (no password in {passwords_file(settings)} yet)")
    else:
        print(f"Airflow login: {settings.airflow_user} / {password}  (from {passwords_file(settings)})")
    if not args.stack_only:
        print(f"Streaming jobs page: {settings.airflow_url}/tributary/jobs/  (also in the UI menu)")
    print(f"ready in {time.monotonic() - started:.0f}s")
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    """Stop every process `up` started (nothing else)."""
    try:
        stack.down(settings)
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Show each component's state; exit 1 if any is not healthy."""
    statuses = stack.status(settings)
    print(status_table(statuses))
    return 0 if all(s.healthy for s in statuses) else 1


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    """Show every setting: environment variable, current value, meaning."""
    print(render_table(["variable", "value", "meaning"], settings.describe()))
    return 0


def _run_steps(steps: list[Callable[[], StepReport]]) -> int:
    reports = []
    for step in steps:
        try:
            report = step()
        except (ProvisioningError, OSError, RuntimeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for line in report.lines:
            print(line)
        reports.append(report.to_dict())
    print(bootstrap.summarize(reports))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Apply pending SQL migrations (sql/migrations) to TRIBUTARY_PG_URL."""
    return _run_steps([lambda: bootstrap.migrate(settings.pg_url)])


def cmd_provision(args: argparse.Namespace, settings: Settings) -> int:
    """Create the catalog's Kafka topics and put its Elasticsearch index templates."""
    return _run_steps(
        [
            lambda: bootstrap.create_topics(kafka_admin(settings), settings.kafka_replication_factor),
            lambda: bootstrap.put_index_templates(es_client(settings)),
        ]
    )


def cmd_seed_users(args: argparse.Namespace, settings: Settings) -> int:
    """Fill the users table (the enrichment lookup) with deterministic demo users."""
    from tributary.producers.user_events import user_rows

    rows = user_rows(args.users)
    with pg_connect(settings.pg_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (user_id, name, email, region, segment) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (user_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, "
            "region = EXCLUDED.region, segment = EXCLUDED.segment, updated_at = now()",
            rows,
        )
    print(f"users: {len(rows)} upserted")
    return 0


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    """Produce a pipeline's records (valid, invalid, late, bursts) to its topic."""
    from tributary.producers.user_events import produce

    pipeline = get_pipeline(args.pipeline)
    count = args.count if args.count > 0 else sys.maxsize
    rate = args.rate if args.rate is not None else DEFAULT_RATES[pipeline.name]
    records = _generator(args, pipeline.name, count, rate or 10_000.0)

    def progress(report: ProduceReport) -> None:
        print(f"produced {report.produced:,} ({report.rate:,.0f}/s)", flush=True)

    try:
        report = produce(
            records,
            producer_config=kafka_config(settings),
            topic=pipeline.topic.name,
            rate=rate or None,
            on_progress=progress,
        )
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0
    print(f"produced {report.produced:,} records in {report.seconds:.1f}s ({report.rate:,.0f}/s): {report.by_kind}")
    return 0


# Records per second `produce` sends when --rate is not given (weather: ~10k readings a minute).
DEFAULT_RATES = {USER_EVENTS.name: 1_000.0, WEATHER.name: 10_000 / 60, APP_LOGS.name: 200.0}


def _generator(args: argparse.Namespace, pipeline: str, count: int, per_s: float) -> Iterator[GeneratedEvent]:
    """The seeded record generator of `pipeline`, with the mix the options ask for."""
    start = datetime.now(UTC)
    if pipeline == WEATHER.name:
        from tributary.producers.weather import ReadingMix, generate_readings

        mix = ReadingMix(
            stations=args.stations,
            invalid_share=args.invalid_share,
            late_share=args.late_share,
            out_of_order_share=args.out_of_order_share,
        )
        return generate_readings(count, seed=args.seed, start=start, readings_per_s=per_s, mix=mix)
    if pipeline == APP_LOGS.name:
        from tributary.producers.app_logs import LogMix, generate_log_lines

        log_mix = LogMix(
            invalid_share=args.invalid_share, error_burst_share=args.error_burst_share, json_share=args.json_share
        )
        return generate_log_lines(count, seed=args.seed, start=start, lines_per_s=per_s, mix=log_mix)
    from tributary.producers.user_events import EventMix, generate_events

    event_mix = EventMix(
        users=args.users,
        invalid_share=args.invalid_share,
        late_share=args.late_share,
        burst_users=tuple(args.burst_user),
        burst_share=args.burst_share if args.burst_user else 0.0,
    )
    return generate_events(count, seed=args.seed, start=start, events_per_s=per_s, mix=event_mix)


def cmd_run_job(args: argparse.Namespace, settings: Settings) -> int:
    """Run a pipeline's streaming job in the foreground with spark-submit (Ctrl-C stops it)."""
    from spark_jobs.submit import job_environment, submit_argv

    pipeline = get_pipeline(args.pipeline)
    job_args = [*(["--available-now"] if args.available_now else []), *(["--no-es"] if args.no_es else [])]
    argv = submit_argv(pipeline, master=settings.spark_master, job_args=job_args)
    print(" ".join(argv), flush=True)
    return subprocess.call(argv, env=job_environment())


def _run_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pipeline", nargs="?", default=USER_EVENTS.name, choices=sorted(PIPELINES), help="pipeline whose job to run"
    )
    parser.add_argument("--available-now", action="store_true", help="process what is in the topic, then stop")
    parser.add_argument("--no-es", action="store_true", help="do not index into Elasticsearch")


def _produce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pipeline", nargs="?", default=USER_EVENTS.name, choices=sorted(PIPELINES), help="whose records to send"
    )
    parser.add_argument("--count", type=int, default=10_000, help="records to send; 0 = run until interrupted")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="records per second; 0 = as fast as possible (default: "
        + ", ".join(f"{name} {rate:g}" for name, rate in DEFAULT_RATES.items())
        + ")",
    )
    parser.add_argument("--invalid-share", type=float, default=0.0, help="share of invalid records (every kind)")
    parser.add_argument("--late-share", type=float, default=0.0, help="share of late records (user_events, weather)")
    parser.add_argument("--seed", type=int, default=42)
    events = parser.add_argument_group("user_events")
    events.add_argument("--users", type=int, default=1_000, help="distinct user ids")
    events.add_argument("--burst-user", type=int, action="append", default=[], help="user id sending bursts")
    events.add_argument("--burst-share", type=float, default=0.05, help="share of events from burst users")
    weather = parser.add_argument_group("weather")
    weather.add_argument("--stations", type=int, default=200, help="distinct weather stations")
    weather.add_argument(
        "--out-of-order-share", type=float, default=0.0, help="share of readings behind, but within the watermark"
    )
    logs = parser.add_argument_group("app_logs")
    logs.add_argument("--error-burst-share", type=float, default=0.0, help="share of lines in 5xx error bursts")
    logs.add_argument("--json-share", type=float, default=0.3, help="share of JSON API log lines (rest: combined)")


def _up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stack-only",
        action="store_true",
        help="only start the services (no bootstrap run, no streaming jobs, no demo producer)",
    )


def _seed_users_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=1_000, help="user ids 1..N")


COMMANDS: dict[str, Command] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "settings": cmd_settings,
    "migrate": cmd_migrate,
    "provision": cmd_provision,
    "seed-users": cmd_seed_users,
    "produce": cmd_produce,
    "run-job": cmd_run_job,
}

# Subcommands with options: name -> function adding them to the subcommand's parser.
ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "up": _up_arguments,
    "produce": _produce_arguments,
    "seed-users": _seed_users_arguments,
    "run-job": _run_job_arguments,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of COMMANDS."""
    parser = argparse.ArgumentParser(prog="tributary", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens in detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func in COMMANDS.items():
        summary = (func.__doc__ or "").strip().splitlines()[0]
        subparser = sub.add_parser(name, help=summary, description=summary)
        if name in ARGUMENTS:
            ARGUMENTS[name](subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tributary` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings()
    except ValueError as exc:  # a malformed TRIBUTARY_* variable; the message names it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())

"""One pass of the streaming supervisor: bring every job to its desired state, restart the sick.

For each implemented catalog job:

- desired *running*, driver gone: record the failure (its last error or the log tail), then start
  it again once its backoff has passed; after `max_restarts` failures in a row the job is marked
  failed and the pass raises, so the DAG run fails with the job's error.
- desired *running*, driver there: stale heartbeat or lag growing past the limit -> kill and
  restart (with backoff); healthy long enough -> forget earlier failures.
- desired *stopped*: ask the job to stop (it polls the registry), kill it after the grace period.

Every action goes to the registry's action log. Deciding is `tributary.health`'s job; this module
gathers the facts and acts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tributary.catalog import Pipeline
from tributary.health import assess, backoff_delay, healthy_long_enough, lag_records
from tributary.registry import JobRecord, JobRegistry
from tributary_airflow.hooks import StreamingJobHook, implemented_pipelines, log_tail, utcnow

log = logging.getLogger(__name__)

# Grace given to an unhealthy driver between SIGTERM and SIGKILL: it is already misbehaving.
UNHEALTHY_KILL_GRACE_S = 15.0


class JobsFailed(RuntimeError):
    """Jobs that exhausted their restarts in this pass; the message carries their last errors."""


@dataclass
class SupervisionReport:
    lines: list[str] = field(default_factory=list)
    gave_up: list[tuple[str, str]] = field(default_factory=list)

    def say(self, job: str, text: str) -> None:
        line = f"{job}: {text}"
        log.info(line)
        self.lines.append(line)


class StreamingSupervisor:
    def __init__(
        self,
        hook: StreamingJobHook,
        pipelines: Sequence[Pipeline] | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.hook = hook
        self.pipelines = list(pipelines) if pipelines is not None else implemented_pipelines()
        self.now = now

    def run_once(self) -> SupervisionReport:
        report = SupervisionReport()
        with self.hook.registry() as registry:
            registry.ensure(p.job_name for p in self.pipelines)
            for pipeline in self.pipelines:
                try:
                    self._supervise(registry, pipeline, report)
                except Exception as error:  # noqa: BLE001 - recorded as the job's failure below
                    # One job's trouble (e.g. its submit failing) must not leave the others
                    # unsupervised; it is recorded and counted as a failure of that job.
                    report.say(pipeline.job_name, f"supervision error: {error}")
                    self._failed(registry, registry.get(pipeline.job_name), pipeline, str(error), report)
        if report.gave_up:
            details = "\n".join(f"- {job}: {error}" for job, error in report.gave_up)
            raise JobsFailed(
                f"{len(report.gave_up)} streaming job(s) failed after exhausting their restarts:\n{details}\n"
                "Fix the cause, then trigger tributary_streaming_control with action=start (or restart)."
            )
        return report

    # ------------------------------------------------------------------ per job
    def _supervise(self, registry: JobRegistry, pipeline: Pipeline, report: SupervisionReport) -> None:
        job, health = pipeline.job_name, pipeline.health
        record = registry.get(job)
        alive = self.hook.is_active(record)

        if record.desired_state == "stopped":
            self._enforce_stop(registry, record, pipeline, alive, report)
            return

        if record.actual_state == "failed" and record.consecutive_failures > health.max_restarts:
            report.say(job, f"failed after {health.max_restarts} restarts; waiting for a person (control DAG)")
            return

        if not alive and record.submission:
            error = self._exit_error(record)
            registry.record_exit(job, "failed", error)
            report.say(job, f"driver gone: {error.splitlines()[0]}")
            if not self._failed(registry, registry.get(job), pipeline, error, report):
                return
            record = registry.get(job)

        if alive:
            verdict = self._check(registry, record, pipeline)
            if verdict is None:
                report.say(job, "healthy")
                return
            self.hook.kill(registry, record, grace_s=UNHEALTHY_KILL_GRACE_S, reason=verdict)
            registry.record_exit(job, "failed", verdict)
            report.say(job, f"unhealthy, killed: {verdict}")
            if not self._failed(registry, registry.get(job), pipeline, verdict, report):
                return
            record = registry.get(job)

        now = self.now()
        if record.next_restart_at is not None and now < record.next_restart_at:
            wait = (record.next_restart_at - now).total_seconds()
            report.say(job, f"restart backoff: next attempt in {wait:.0f}s")
            return
        restart = record.restarts > 0 or record.consecutive_failures > 0
        reason = "restart after failure" if record.consecutive_failures else "desired state is running"
        self.hook.submit(registry, job, restart=restart, reason=reason)
        report.say(job, "restarted" if restart else "started")

    def _check(self, registry: JobRegistry, record: JobRecord, pipeline: Pipeline) -> str | None:
        """None when healthy, else why not."""
        health, now = pipeline.health, self.now()
        beats = registry.latest_heartbeats(record.job_name, since=record.started_at)
        last_beat = max((b.recorded_at for b in beats), default=None)
        samples = record.lag_samples
        if beats:
            lag = (
                max(lag_records(self.hook.log_ends(pipeline), b.end_offsets) for b in beats if b.end_offsets)
                if any(b.end_offsets for b in beats)
                else None
            )
            if lag is not None:
                samples = registry.record_lag(record.job_name, lag, keep=health.lag_growth_checks + 1)
        verdict = assess(
            now=now, started_at=record.started_at, last_heartbeat_at=last_beat, lag_samples=samples, health=health
        )
        if not verdict.healthy:
            return verdict.reason
        if last_beat is not None:
            registry.record_healthy(
                record.job_name,
                reset_failures=record.consecutive_failures > 0
                and healthy_long_enough(record.healthy_since, now, health),
            )
        return None

    def _failed(
        self, registry: JobRegistry, record: JobRecord, pipeline: Pipeline, error: str, report: SupervisionReport
    ) -> bool:
        """Counts a failure; False when the job has now exhausted its restarts."""
        failures = record.consecutive_failures + 1
        give_up = failures > pipeline.health.max_restarts
        next_at = None if give_up else self.now() + backoff_delay(failures, pipeline.health)
        registry.record_failure(record.job_name, error, next_at, give_up=give_up)
        if give_up:
            report.gave_up.append((record.job_name, error))
            report.say(record.job_name, f"marked failed after {failures - 1} restarts in a row")
        return not give_up

    def _enforce_stop(
        self, registry: JobRegistry, record: JobRecord, pipeline: Pipeline, alive: bool, report: SupervisionReport
    ) -> None:
        job = record.job_name
        if not alive:
            if record.submission:
                registry.record_exit(job, "stopped")
                report.say(job, "stopped")
            return
        if record.stop_requested_at is None:
            registry.request_stop(job, "desired state is stopped")
            report.say(job, "stop requested")
            return
        waited = self.now() - record.stop_requested_at
        if waited > timedelta(seconds=pipeline.health.stop_grace_s):
            self.hook.kill(
                registry, record, grace_s=10.0, reason=f"did not stop within {pipeline.health.stop_grace_s}s"
            )
            registry.record_exit(job, "stopped")
            report.say(job, "killed: did not stop within the grace period")
        else:
            report.say(job, f"stopping ({waited.total_seconds():.0f}s since the request)")

    @staticmethod
    def _exit_error(record: JobRecord) -> str:
        if record.actual_state == "failed" and record.last_error:
            return record.last_error
        return f"the driver (pid {record.pid}) exited unexpectedly. Log tail:\n{log_tail(record.log_path)}"

"""Demo producers: each implemented pipeline gets traffic at a modest rate, so a fresh platform has data flowing."""

from __future__ import annotations

import os
from collections.abc import Mapping

from tributary.airflow_env import tributary_environment
from tributary.catalog import APP_LOGS, PIPELINES, USER_EVENTS, WEATHER
from tributary.settings import REPO_ROOT, Settings
from tributary.stack.component import ProcessComponent, print_progress, python_bin
from tributary.stack.health import Progress, Unhealthy

# A bursting user makes the anomaly path visible within a few minutes.
DEMO_BURST_USER = 7

# Rate of each pipeline's producer relative to TRIBUTARY_DEMO_RATE (user events per second): at
# the default 20/s, weather stations send ~10k readings per minute (the pipeline's design load)
# and the apps log as many lines as users make events.
RATE_FACTOR = {USER_EVENTS.name: 1.0, WEATHER.name: 10_000 / 60 / 20, APP_LOGS.name: 1.0}

# What each producer sends besides ordinary records: a little of everything the job handles.
EXTRA_ARGS = {
    USER_EVENTS.name: [
        "--invalid-share",
        "0.02",
        "--burst-user",
        str(DEMO_BURST_USER),
        "--burst-share",
        "0.03",
    ],
    WEATHER.name: ["--invalid-share", "0.01", "--late-share", "0.002", "--out-of-order-share", "0.02"],
    APP_LOGS.name: ["--invalid-share", "0.01", "--error-burst-share", "0.02"],
}


class DemoProducer(ProcessComponent):
    """`tributary produce <pipeline> --count 0` at its share of `TRIBUTARY_DEMO_RATE` (0: not started)."""

    health_timeout = 20.0

    def __init__(
        self, settings: Settings, pipeline: str = USER_EVENTS.name, progress: Progress | None = print_progress
    ) -> None:
        # The user_events producer keeps the name it has always had (its PID file and log).
        self.name = "producer" if pipeline == USER_EVENTS.name else f"producer-{pipeline}"
        self.pipeline = pipeline
        super().__init__(settings, progress)

    @property
    def rate(self) -> float:
        return self.settings.demo_rate * RATE_FACTOR[self.pipeline]

    @property
    def embedded(self) -> bool:
        return self.settings.demo_rate > 0

    @property
    def endpoint_text(self) -> str:
        if not self.embedded:
            return "off (TRIBUTARY_DEMO_RATE=0)"
        return f"{self.pipeline}: {self.rate:g}/s"

    def command(self) -> list[str]:
        return [
            str(python_bin("tributary")),
            "produce",
            self.pipeline,
            "--count",
            "0",
            "--rate",
            f"{self.rate:.3f}",
            *EXTRA_ARGS[self.pipeline],
        ]

    def environment(self) -> Mapping[str, str] | None:
        return {**os.environ, **tributary_environment(self.settings)}

    def probe(self) -> None:
        record = self.pid_file.live()
        if record is None:
            raise Unhealthy(f"the {self.pipeline} producer process is not running")


def demo_producers(settings: Settings, progress: Progress | None = print_progress) -> list[DemoProducer]:
    """One demo producer per pipeline whose streaming job exists in this checkout."""
    return [DemoProducer(settings, p.name, progress) for p in PIPELINES.values() if (REPO_ROOT / p.job_path).exists()]

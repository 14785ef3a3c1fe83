"""The demo producer: user events at a modest rate, so a fresh platform has data flowing."""

from __future__ import annotations

from collections.abc import Mapping

from tributary.airflow_env import tributary_environment
from tributary.stack.component import ProcessComponent, python_bin
from tributary.stack.health import Unhealthy

# A bursting user makes the anomaly path visible within a few minutes.
DEMO_BURST_USER = 7


class DemoProducer(ProcessComponent):
    """`tributary produce --count 0` at `TRIBUTARY_DEMO_RATE` events/s (0: not started)."""

    name = "producer"
    health_timeout = 20.0

    @property
    def embedded(self) -> bool:
        return self.settings.demo_rate > 0

    @property
    def endpoint_text(self) -> str:
        return f"{self.settings.demo_rate:g} events/s" if self.embedded else "off (TRIBUTARY_DEMO_RATE=0)"

    def command(self) -> list[str]:
        return [
            str(python_bin("tributary")),
            "produce",
            "--count",
            "0",
            "--rate",
            f"{self.settings.demo_rate:g}",
            "--invalid-share",
            "0.02",
            "--burst-user",
            str(DEMO_BURST_USER),
            "--burst-share",
            "0.03",
        ]

    def environment(self) -> Mapping[str, str] | None:
        import os

        return {**os.environ, **tributary_environment(self.settings)}

    def probe(self) -> None:
        record = self.pid_file.live()
        if record is None:
            raise Unhealthy("the producer process is not running")

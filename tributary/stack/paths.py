"""Where the stack keeps its logs, PID files and data under `settings.state_dir`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StatePaths:
    """Layout of the state directory: `logs/<component>.log`, `run/<component>.pid`, `secrets/`."""

    state_dir: Path

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def postgres_dir(self) -> Path:
        """Root of the private PostgreSQL cluster (owned by the `postgres` user)."""
        return self.state_dir / "postgres"

    def log(self, component: str) -> Path:
        """The log file of `component`."""
        return self.logs_dir / f"{component}.log"

    def pid(self, component: str) -> Path:
        """The PID file of `component`."""
        return self.run_dir / f"{component}.pid"

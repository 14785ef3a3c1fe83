"""Schema migrations: the versioned SQL files in `sql/migrations`, applied with yoyo-migrations."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from yoyo import get_backend, read_migrations

from tributary.catalog import PLATFORM
from tributary.settings import REPO_ROOT

MIGRATIONS_DIR = REPO_ROOT / "sql" / "migrations"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already_applied: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    def summary(self) -> str:
        if not self.applied:
            return f"migrations: unchanged ({len(self.already_applied)} already applied)"
        return f"migrations: applied {', '.join(self.applied)} ({len(self.already_applied)} already applied)"


def yoyo_url(pg_url: str) -> str:
    """yoyo speaks psycopg 3 through the `postgresql+psycopg://` scheme."""
    scheme, sep, rest = pg_url.partition("://")
    if not sep or not scheme.startswith("postgres"):
        raise ValueError(f"{pg_url!r} is not a PostgreSQL URL (expected postgresql://user@host:port/db)")
    return f"postgresql+psycopg://{rest}"


def apply_migrations(pg_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> MigrationReport:
    """Apply every pending migration, under yoyo's lock so concurrent runs cannot interleave."""
    backend = get_backend(yoyo_url(pg_url), migration_table=PLATFORM.migrations_table)
    migrations = read_migrations(str(migrations_dir))
    if not migrations:
        raise FileNotFoundError(f"no migrations found in {migrations_dir}; is the checkout complete?")
    with backend.lock():
        pending = backend.to_apply(migrations)
        pending_ids = [m.id for m in pending]
        already = [m.id for m in migrations if m.id not in pending_ids]
        for migration_id in pending_ids:
            log.info("applying migration %s", migration_id)
        backend.apply_migrations(pending)
    return MigrationReport(applied=pending_ids, already_applied=already)


def pending_migrations(pg_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Ids of migrations not yet applied (nothing is changed)."""
    backend = get_backend(yoyo_url(pg_url), migration_table=PLATFORM.migrations_table)
    return [m.id for m in backend.to_apply(read_migrations(str(migrations_dir)))]

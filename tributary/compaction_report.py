"""The compaction report: what one compaction run did, as JSON, as an HTML page with charts, and
as a row of the `compaction_reports` table (PLATFORM.compaction_reports_table).

    report = CompactionReport.start(run_id="manual__2026-11-23", dry_run=False, today=date.today(), lake_uri=...)
    report.partitions.append(PartitionResult(...))
    report.finish()
    json_path, html_path = save_report_files(report, reports_dir(settings))   # opens from disk too
    html = render_html(report, asset_base="static/")                          # what the UI page serves

The page draws two ECharts bar charts (rows before/after per table and day; bytes reclaimed and
written) from the report's JSON, which it carries in a `<script type="application/json">` block;
`static/compaction-report.js` of the Airflow plugin reads it. ECharts is the copy
`scripts/install_js.sh` fetched from npm (never a CDN); the standalone copy of a report gets the
scripts copied next to it. Every value goes into the HTML escaped.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tributary.catalog import PLATFORM
from tributary.clients import pg_connect
from tributary.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

# The Airflow plugin's static files: the report script and styles, and ECharts fetched from npm.
UI_STATIC_DIR = REPO_ROOT / "plugins" / "tributary_airflow" / "ui" / "static"
ECHARTS_FILE = UI_STATIC_DIR / "vendor" / "echarts.min.js"
REPORT_SCRIPT = UI_STATIC_DIR / "compaction-report.js"
STYLESHEETS = (UI_STATIC_DIR / "tributary.css", UI_STATIC_DIR / "compaction-report.css")
# Where the Airflow plugin serves the reports (tributary_airflow.ui.reports_page): `<path>/<id>`.
REPORTS_URL_PATH = "/tributary/reports"

PartitionAction = Literal["archived", "kept", "would_archive"]
Verification = Literal["passed", "failed", "skipped"]
RunState = Literal["running", "succeeded", "failed"]
# Differing checksum metrics listed on the page per partition (the JSON has them all).
MISMATCHES_SHOWN = 4


@dataclass
class PartitionResult:
    """What happened to one raw day partition."""

    pipeline: str
    table: str
    partition: str
    day: str  # YYYY-MM-DD
    action: PartitionAction
    verification: Verification
    rows_before: int
    rows_after: int
    # Rows of this day in the lake after the run (all batches), and in the batch this run wrote.
    lake_rows: int = 0
    rows_exported: int = 0
    duplicates: int = 0
    bytes_reclaimed: int = 0
    files_written: int = 0
    bytes_written: int = 0
    # True when an earlier run's export already held every row (it crashed before the drop).
    reused_export: bool = False
    export_uri: str | None = None
    duration_s: float = 0.0
    mismatches: dict[str, list[int | None]] = field(default_factory=dict)
    error: str | None = None
    checksum: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartitionResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class CompactionReport:
    """One compaction run: partitions, expired indices, outbox cleanup, vacuumed tables, errors."""

    run_id: str
    started_at: str
    dry_run: bool
    today: str
    lake_uri: str
    id: int | None = None
    finished_at: str | None = None
    state: RunState = "running"
    partitions: list[PartitionResult] = field(default_factory=list)
    indices: list[dict[str, Any]] = field(default_factory=list)
    outbox: dict[str, Any] | None = None
    vacuumed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, *, run_id: str, dry_run: bool, today: date, lake_uri: str) -> CompactionReport:
        return cls(
            run_id=run_id,
            started_at=datetime.now(UTC).isoformat(),
            dry_run=dry_run,
            today=today.isoformat(),
            lake_uri=lake_uri,
        )

    @property
    def verification_failed(self) -> bool:
        return any(p.verification == "failed" for p in self.partitions)

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)).total_seconds()

    def finish(self) -> None:
        """Stamp the end; failed when a verification failed or anything raised."""
        self.finished_at = datetime.now(UTC).isoformat()
        self.state = "failed" if self.verification_failed or self.errors else "succeeded"

    def totals(self) -> dict[str, int]:
        archived = [p for p in self.partitions if p.action == "archived"]
        return {
            "partitions": len(self.partitions),
            "archived": len(archived),
            "kept": sum(p.action == "kept" for p in self.partitions),
            "rows_archived": sum(p.rows_before for p in archived),
            "bytes_reclaimed": sum(p.bytes_reclaimed for p in self.partitions),
            "files_written": sum(p.files_written for p in self.partitions),
            "bytes_written": sum(p.bytes_written for p in self.partitions),
            "duplicates": sum(p.duplicates for p in self.partitions),
            "verification_failures": sum(p.verification == "failed" for p in self.partitions),
            "indices_deleted": len(self.indices),
            "outbox_rows": int(self.outbox["rows"]) if self.outbox else 0,
        }

    def summary(self) -> str:
        """One line for lists and logs."""
        t = self.totals()
        if self.dry_run:
            candidates = [p for p in self.partitions if p.action == "would_archive"]
            rows = sum(p.rows_before for p in candidates)
            reclaim = sum(p.bytes_reclaimed for p in candidates)
            parts = [f"would archive {len(candidates)} partition(s) ({rows:,} rows, {format_bytes(reclaim)})"]
        else:
            parts = [
                f"archived {t['archived']} partition(s) ({t['rows_archived']:,} rows, "
                f"{format_bytes(t['bytes_reclaimed'])} reclaimed, {t['files_written']} file(s) written)"
            ]
        if t["verification_failures"]:
            parts.append(f"{t['verification_failures']} verification failure(s), partition(s) kept")
        if t["duplicates"]:
            parts.append(f"{t['duplicates']:,} duplicate row(s)")
        parts.append(f"{t['indices_deleted']} index(es) {'to delete' if self.dry_run else 'deleted'}")
        parts.append(f"{t['outbox_rows']:,} outbox row(s) {'to delete' if self.dry_run else 'deleted'}")
        if self.errors:
            parts.append(f"{len(self.errors)} error(s)")
        prefix = "compaction (dry run)" if self.dry_run else "compaction"
        return f"{prefix} {self.state}: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["partitions"] = [p.to_json() for p in self.partitions]
        data["totals"] = self.totals()
        data["duration_s"] = self.duration_s
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CompactionReport:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "partitions"}
        report = cls(**known)
        report.partitions = [PartitionResult.from_json(p) for p in data.get("partitions", [])]
        return report


def format_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------- HTML

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{base}<title>Compaction report {title_id} · Tributary</title>
{stylesheets}
<script src="{assets}{echarts}" defer></script>
<script src="{assets}compaction-report.js" defer></script>
</head>
<body>
<header>
  <h1>Compaction report {title_id}</h1>
  <span class="badge state-{state_class}" data-state="{state}">{state_upper}</span>
  {back}
</header>
<p class="summary" id="summary">{summary}</p>
<dl class="facts">
  <div><dt>Run</dt><dd>{run_id}</dd></div>
  <div><dt>Started</dt><dd>{started}</dd></div>
  <div><dt>Duration</dt><dd>{duration}</dd></div>
  <div><dt>Today (UTC)</dt><dd>{today}</dd></div>
  <div><dt>Lake</dt><dd class="mono">{lake}</dd></div>
</dl>
{missing_echarts}
<section class="charts">
{charts}
</section>
<h2>Raw partitions</h2>
{partitions}
<h2>Elasticsearch indices past retention</h2>
{indices}
<h2>Outbox</h2>
{outbox}
<h2>Vacuumed</h2>
<p>{vacuumed}</p>
{errors}
<script type="application/json" id="report-data">{data}</script>
</body>
</html>
"""

_CHARTS = """  <figure>
    <figcaption>Rows per table and day: in PostgreSQL before and after, in the lake</figcaption>
    <div class="chart" id="chart-rows" data-chart="rows" role="img" aria-label="rows per table and day"></div>
  </figure>
  <figure>
    <figcaption>Bytes reclaimed in PostgreSQL and written to the lake</figcaption>
    <div class="chart" id="chart-bytes" data-chart="bytes" role="img" aria-label="bytes per table and day"></div>
  </figure>"""

_PARTITION_COLUMNS = (
    ("Table", "nowrap"),
    ("Day", "nowrap"),
    ("Action", None),
    ("Verification", None),
    ("Rows before", "num"),
    ("Rows after", "num"),
    ("Rows in lake", "num"),
    ("Duplicates", "num"),
    ("Reclaimed", "num"),
    ("Files written", "num"),
    ("Duration", "num"),
    ("Detail", None),
)


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: Sequence[tuple[str, str | None]], rows: Sequence[Sequence[object]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f'<th scope="col"{_cls(c)}>{_e(h)}</th>' for h, c in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{_cls(c)}>{cell}</td>" for (_, c), cell in zip(headers, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cls(name: str | None) -> str:
    return f' class="{name}"' if name else ""


def _partition_row(p: PartitionResult) -> list[object]:
    details = []
    if p.reused_export:
        details.append("export of an earlier run re-verified")
    if p.export_uri:
        details.append(f'<span class="mono">{_e(p.export_uri)}</span>')
    if p.mismatches:
        shown = list(p.mismatches.items())[:MISMATCHES_SHOWN]
        more = len(p.mismatches) - len(shown)
        text = ", ".join(f"{k} {v[0]} ≠ {v[1]}" for k, v in shown) + (f" and {more} more" if more > 0 else "")
        details.append("mismatch: " + _e(text))
    if p.error:
        details.append(f'<span class="error-text">{_e(p.error)}</span>')
    verification_class = {"passed": "running", "failed": "failed", "skipped": "stopped"}[p.verification]
    return [
        f'<span class="mono">{_e(p.table)}</span>',
        _e(p.day),
        _e(p.action.replace("_", " ")),
        f'<span class="badge state-{verification_class}">{_e(p.verification)}</span>',
        f"{p.rows_before:,}",
        f"{p.rows_after:,}",
        f"{p.lake_rows:,}",
        f"{p.duplicates:,}",
        _e(format_bytes(p.bytes_reclaimed)),
        f"{p.files_written:,}",
        f"{p.duration_s:.1f} s",
        "<br>".join(details),
    ]


def _json_for_script(data: Any) -> str:
    """JSON that cannot end its <script> block early ('</' and '<!--' are escaped)."""
    text = json.dumps(data, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    report: CompactionReport,
    *,
    asset_base: str,
    base_href: str | None = None,
    back_href: str | None = None,
    echarts_path: str = "echarts.min.js",
    echarts_available: bool = True,
) -> str:
    """The report as one HTML page; scripts and styles load from `asset_base` (e.g. 'static/')."""
    t = report.totals()
    duration = report.duration_s
    partitions = _table(
        _PARTITION_COLUMNS,
        [_partition_row(p) for p in report.partitions],
        "No raw day partition was older than its pipeline's hot retention.",
    )
    indices = _table(
        (("Index", None), ("Family", None), ("Day", "nowrap"), ("Retention", "num"), ("Docs", "num"), ("Size", "num")),
        [
            [
                f'<span class="mono">{_e(i["index"])}</span>',
                _e(i["family"]),
                _e(i["day"]),
                f"{i['retention_days']} d",
                f"{i['docs']:,}",
                _e(format_bytes(i["size_bytes"])),
            ]
            for i in report.indices
        ],
        "No daily index was past its retention.",
    )
    if report.outbox:
        verb = "deleted" if report.outbox.get("deleted") else "to delete (dry run)"
        outbox = (
            f"<p>{int(report.outbox['rows']):,} published row(s) older than {report.outbox['retention_days']} days "
            f"(before {_e(report.outbox['cutoff'])}) {verb}.</p>"
        )
    else:
        outbox = '<p class="muted">Not cleaned in this run.</p>'
    errors = ""
    if report.errors:
        errors = '<h2>Errors</h2><ul class="errors">' + "".join(
            f'<li class="error-text">{_e(e)}</li>' for e in report.errors
        )
        errors += "</ul>"
    missing = ""
    if not echarts_available:
        missing = (
            '<p class="status error">Charts need ECharts, which is not installed here: run '
            "<code>scripts/install_js.sh</code> (part of <code>make setup</code>).</p>"
        )
    title_id = f"#{report.id}" if report.id is not None else report.run_id
    return _PAGE.format(
        base=f'<base href="{_e(base_href)}">\n' if base_href else "",
        title_id=_e(title_id),
        stylesheets="\n".join(f'<link rel="stylesheet" href="{_e(asset_base)}{_e(css.name)}">' for css in STYLESHEETS),
        assets=_e(asset_base),
        echarts=_e(echarts_path),
        state=_e(report.state),
        state_class=_e({"succeeded": "running", "failed": "failed", "running": "starting"}[report.state]),
        state_upper=_e(report.state.upper() + (" · DRY RUN" if report.dry_run else "")),
        back=f'<a class="muted" href="{_e(back_href)}">All reports</a>' if back_href else "",
        summary=_e(report.summary()),
        run_id=_e(report.run_id),
        started=_e(report.started_at),
        duration="running" if duration is None else f"{duration:.1f} s",
        today=_e(report.today),
        lake=_e(report.lake_uri),
        missing_echarts=missing,
        charts=_CHARTS if report.partitions else "",
        partitions=partitions,
        indices=indices,
        outbox=outbox,
        vacuumed=_e(", ".join(report.vacuumed) or "nothing"),
        errors=errors,
        data=_json_for_script({**report.to_json(), "totals": t}),
    )


def reports_dir(settings: Settings) -> Path:
    """Where the compaction job saves report files: `<state_dir>/reports/compaction`."""
    return settings.state_dir / "reports" / "compaction"


def save_report_files(report: CompactionReport, directory: Path) -> tuple[Path, Path]:
    """Write `<directory>/<id or run>/report.json` and `report.html` with its scripts and styles.

    The HTML references its scripts by relative paths next to it, so it opens from disk (file://)
    as well. Without ECharts installed the page says how to install it; the run does not fail.
    """
    name = f"{report.id:06d}" if report.id is not None else _safe_name(report.run_id)
    target = directory / name
    target.mkdir(parents=True, exist_ok=True)
    json_path = target / "report.json"
    _write_atomic(json_path, json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
    echarts_available = ECHARTS_FILE.is_file()
    if echarts_available:
        shutil.copyfile(ECHARTS_FILE, target / "echarts.min.js")
    else:
        log.warning(
            "report %s: %s is missing, its charts will not render; run scripts/install_js.sh", name, ECHARTS_FILE
        )
    for asset in (REPORT_SCRIPT, *STYLESHEETS):
        shutil.copyfile(asset, target / asset.name)
    html_path = target / "report.html"
    _write_atomic(html_path, render_html(report, asset_base="", echarts_available=echarts_available))
    return json_path, html_path


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------- table

_TABLE = sql.Identifier(PLATFORM.compaction_reports_table)


def insert_report(conn: psycopg.Connection[Any], report: CompactionReport) -> int:
    """Record the start of a run (state `running`); sets and returns `report.id`."""
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {} (run_id, started_at, dry_run, state) VALUES (%s, %s, %s, 'running') RETURNING id"
        ).format(_TABLE),
        (report.run_id, datetime.fromisoformat(report.started_at), report.dry_run),
    ).fetchone()
    assert row is not None
    report.id = int(row[0])
    return report.id


def store_report(
    conn: psycopg.Connection[Any], report: CompactionReport, json_path: Path | None, html_path: Path | None
) -> None:
    """Save the finished report (state, JSON, summary, file paths) into its row."""
    if report.id is None:
        raise ValueError("the report has no id; insert_report() it before storing it")
    conn.execute(
        sql.SQL(
            """UPDATE {} SET finished_at = %s, state = %s, report = %s, summary = %s, json_path = %s, html_path = %s
               WHERE id = %s"""
        ).format(_TABLE),
        (
            datetime.fromisoformat(report.finished_at) if report.finished_at else None,
            report.state,
            Jsonb(report.to_json()),
            report.summary(),
            str(json_path) if json_path else None,
            str(html_path) if html_path else None,
            report.id,
        ),
    )


@dataclass(frozen=True)
class ReportListing:
    """One line of the reports list."""

    id: int
    run_id: str
    started_at: datetime
    finished_at: datetime | None
    state: str
    dry_run: bool
    summary: str | None


def list_reports(conn: psycopg.Connection[Any], limit: int = 100) -> list[ReportListing]:
    """The newest reports first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "SELECT id, run_id, started_at, finished_at, state, dry_run, summary FROM {} ORDER BY id DESC LIMIT %s"
            ).format(_TABLE),
            (limit,),
        )
        return [ReportListing(**row) for row in cur.fetchall()]


def load_report(conn: psycopg.Connection[Any], report_id: int) -> CompactionReport | None:
    """The report of row `report_id`, None when there is no such row.

    A run still going (or whose driver died) has no stored JSON yet: its report is rebuilt from
    the row, state `running`, so the page shows that instead of nothing.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL("SELECT id, run_id, started_at, state, dry_run, report FROM {} WHERE id = %s").format(_TABLE),
            (report_id,),
        )
        row = cur.fetchone()
    if row is None:
        return None
    if row["report"]:
        report = CompactionReport.from_json(row["report"])
    else:
        report = CompactionReport(
            run_id=row["run_id"],
            started_at=row["started_at"].isoformat(),
            dry_run=row["dry_run"],
            today="",
            lake_uri="",
        )
    report.id = int(row["id"])
    report.state = row["state"]
    return report


def latest_report_for_run(conn: psycopg.Connection[Any], run_id: str) -> CompactionReport | None:
    """The newest report a run wrote (a retried task writes one per try)."""
    row = conn.execute(sql.SQL("SELECT max(id) FROM {} WHERE run_id = %s").format(_TABLE), (run_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    return load_report(conn, int(row[0]))


@dataclass(frozen=True)
class RunOutcome:
    """How a compaction run ended, in one message that links to its report."""

    ok: bool
    message: str


def run_outcome(pg_url: str, run_id: str, airflow_url: str) -> RunOutcome:
    """The outcome of run `run_id` from its newest report (the DAG's last task logs it)."""
    with pg_connect(pg_url, application_name="tributary-compaction") as conn:
        report = latest_report_for_run(conn, run_id)
    if report is None:
        return RunOutcome(
            False,
            f"run {run_id} left no compaction report: the compact task failed before the job started "
            "(spark-submit missing, the Spark master unreachable, or migrations not applied); see its log",
        )
    link = f"{airflow_url.rstrip('/')}{REPORTS_URL_PATH}/{report.id}"
    lines = [f"{report.summary()} (report #{report.id}: {link})"]
    if report.state == "running":
        lines.append("the report is still `running`: the driver died before it finished; see the compact task's log")
    for p in report.partitions:
        if p.verification == "failed":
            lines.append(f"{p.partition}: verification failed, partition kept: {p.error}")
    lines += report.errors
    return RunOutcome(report.state == "succeeded", "\n".join(lines))

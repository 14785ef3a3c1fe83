"""The compaction report: summary line, JSON round trip, HTML escaping and the standalone copy."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest

from tributary import compaction_report as cr
from tributary.compaction_report import CompactionReport, PartitionResult, format_bytes, render_html, save_report_files


def partition(day: str, **overrides: object) -> PartitionResult:
    values: dict[str, object] = {
        "pipeline": "user_events",
        "table": "user_events",
        "partition": f"user_events_{day.replace('-', '')}",
        "day": day,
        "action": "archived",
        "verification": "passed",
        "rows_before": 1000,
        "rows_after": 0,
        "lake_rows": 1000,
        "rows_exported": 1000,
        "duplicates": 2,
        "bytes_reclaimed": 2 * 1024 * 1024,
        "files_written": 1,
        "bytes_written": 50_000,
    }
    values.update(overrides)
    return PartitionResult(**values)  # type: ignore[arg-type]


def report(*partitions: PartitionResult, dry_run: bool = False) -> CompactionReport:
    result = CompactionReport.start(
        run_id="scheduled__2026-11-23", dry_run=dry_run, today=date(2026, 11, 23), lake_uri="/lake"
    )
    result.partitions.extend(partitions)
    result.indices.append(
        {"index": "tributary-user-events-2026.11.01", "family": "user_events.events", "day": "2026-11-01",
         "retention_days": 3, "docs": 12, "size_bytes": 4096}
    )  # fmt: skip
    result.outbox = {"cutoff": "2026-11-16T00:00:00+00:00", "retention_days": 7, "rows": 5, "deleted": True}
    result.finish()
    return result


def test_summary_counts_what_the_run_did() -> None:
    done = report(partition("2026-10-01"), partition("2026-10-02", rows_before=500))
    assert done.state == "succeeded"
    assert done.summary() == (
        "compaction succeeded: archived 2 partition(s) (1,500 rows, 4.0 MiB reclaimed, 2 file(s) written); "
        "4 duplicate row(s); 1 index(es) deleted; 5 outbox row(s) deleted"
    )


def test_a_failed_verification_fails_the_report() -> None:
    failed = report(
        partition("2026-10-01"),
        partition(
            "2026-10-02", action="kept", verification="failed", rows_after=1000, mismatches={"rows": [1000, 999]}
        ),
    )
    assert failed.state == "failed" and failed.verification_failed
    assert "1 verification failure(s), partition(s) kept" in failed.summary()
    assert failed.totals()["archived"] == 1


def test_dry_run_summary_says_would() -> None:
    dry = report(partition("2026-10-01", action="would_archive", verification="skipped", rows_after=1000), dry_run=True)
    assert dry.summary().startswith("compaction (dry run) succeeded: would archive 1 partition(s) (1,000 rows")


def test_json_round_trip() -> None:
    original = report(partition("2026-10-01", mismatches={"rows": [1, 2]}, checksum={"rows": 1}))
    original.id = 7
    data = json.loads(json.dumps(original.to_json()))
    assert data["totals"]["rows_archived"] == 1000 and data["summary"] == original.summary()
    again = CompactionReport.from_json(data)
    assert again.to_json() == original.to_json()


def test_html_escapes_values_and_carries_the_data_for_the_charts() -> None:
    hostile = report(partition("2026-10-01", error="</script><script>alert(1)</script>", table="user_events"))
    hostile.run_id = '"><img src=x onerror=alert(1)>'
    page = render_html(hostile, asset_base="static/", base_href="/tributary/reports/")
    assert "<img src=x" not in page and "<script>alert(1)</script>" not in page
    assert '<base href="/tributary/reports/">' in page
    assert '<script src="static/echarts.min.js" defer></script>' in page
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert block is not None  # the JSON cannot close its own block early
    data = json.loads(block.group(1))
    assert data["partitions"][0]["error"] == "</script><script>alert(1)</script>"
    assert 'id="chart-rows"' in page and 'id="chart-bytes"' in page


def test_a_report_without_partitions_has_no_charts() -> None:
    page = render_html(report(), asset_base="")
    assert "data-chart" not in page and "No raw day partition was older" in page


def test_standalone_copy_opens_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_echarts = tmp_path / "vendor" / "echarts.min.js"
    fake_echarts.parent.mkdir()
    fake_echarts.write_text("/* echarts */")
    monkeypatch.setattr(cr, "ECHARTS_FILE", fake_echarts)
    done = report(partition("2026-10-01"))
    done.id = 42
    json_path, html_path = save_report_files(done, tmp_path / "reports")
    assert html_path == tmp_path / "reports" / "000042" / "report.html"
    assert json.loads(json_path.read_text())["id"] == 42
    for name in ("echarts.min.js", "compaction-report.js", "tributary.css", "compaction-report.css"):
        assert (html_path.parent / name).is_file(), name
    assert '<script src="echarts.min.js" defer></script>' in html_path.read_text()


def test_standalone_copy_without_echarts_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cr, "ECHARTS_FILE", tmp_path / "missing.js")
    _, html_path = save_report_files(report(partition("2026-10-01")), tmp_path)
    assert "scripts/install_js.sh" in html_path.read_text()
    assert not (html_path.parent / "echarts.min.js").exists()


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB")])
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text

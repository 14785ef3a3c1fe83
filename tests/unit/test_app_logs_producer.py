"""The app log generator: deterministic, realistic shapes, exact kinds (no Spark here)."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from spark_jobs.app_logs.transforms import ALL_RULES
from tributary.producers.app_logs import (
    INVALID_KINDS,
    RULES,
    LogMix,
    endpoint_templates,
    expected_rule,
    generate_log_lines,
)
from tributary.producers.user_events import GeneratedEvent

START = datetime(2026, 10, 10, 22, 0, 0, tzinfo=UTC)
COMBINED = re.compile(
    r'^(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<target>\S+) HTTP/1\.1" (?P<status>\d{3}) '
    r'(?P<bytes>\d+|-) "(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*"(?P<tail>.*)$'
)


def lines(count: int, mix: LogMix, seed: int = 11, per_s: float = 2.0) -> list[GeneratedEvent]:
    return list(generate_log_lines(count, seed=seed, start=START, lines_per_s=per_s, mix=mix))


def test_same_seed_same_lines_other_seed_other_lines() -> None:
    mix = LogMix(json_share=0.4, invalid_share=0.1, error_burst_share=0.05)
    assert lines(300, mix) == lines(300, mix)
    assert lines(300, mix) != lines(300, mix, seed=12)


def test_kinds_add_up_and_every_invalid_kind_is_generated() -> None:
    generated = lines(4_000, LogMix(json_share=0.4, invalid_share=0.1, error_burst_share=0.05))
    kinds = Counter(g.kind.split(":")[0] for g in generated)
    assert set(kinds) == {"combined", "json", "invalid", "error_burst"}
    assert sum(kinds.values()) == 4_000
    assert 0.35 < kinds["json"] / (kinds["json"] + kinds["combined"]) < 0.45
    every_kind = lines(len(INVALID_KINDS), LogMix(invalid_share=1.0))
    assert [g.kind for g in every_kind] == [f"invalid:{kind}" for kind in INVALID_KINDS]


def test_times_are_spaced_from_start_and_keys_are_client_ips() -> None:
    for i, g in enumerate(lines(500, LogMix(json_share=0.5, invalid_share=0.1), per_s=4)):
        assert g.event_time == START + timedelta(seconds=i / 4)
        if g.kind.startswith("invalid:"):
            assert g.key is None
        elif g.value.startswith(b"{"):
            assert g.key == json.loads(g.value)["client_ip"].encode()
        else:
            assert g.key == g.value.split(b" ", 1)[0]


def test_combined_lines_carry_local_time_with_its_offset() -> None:
    generated = [g for g in lines(600, LogMix(json_share=0.0)) if g.kind == "combined"]
    offsets = set()
    for g in generated:
        match = COMBINED.match(g.value.decode())
        assert match, g.value
        logged = datetime.strptime(match["time"], "%d/%b/%Y:%H:%M:%S %z")
        assert logged == g.event_time.replace(microsecond=0)
        offsets.add(match["time"][-5:])
    assert {"+0000", "+0530", "-0500"} <= offsets


def test_combined_flavours_apache_nginx_timed_and_nginx_main() -> None:
    tails: Counter[str] = Counter()
    for g in lines(600, LogMix(json_share=0.0)):
        match = COMBINED.match(g.value.decode())
        assert match
        tail = match["tail"]
        tails["none" if not tail else "latency" if re.fullmatch(r" \d+\.\d{3}", tail) else "forwarded_for"] += 1
        assert not tail or re.fullmatch(r' \d+\.\d{3}| "[^"]*"', tail), tail
    assert min(tails.values()) > 100, tails


def test_json_lines_have_the_api_fields_and_extra_ones() -> None:
    docs = [json.loads(g.value) for g in lines(300, LogMix(json_share=1.0))]
    for doc in docs:
        assert {"timestamp", "method", "path", "status", "latency_ms", "bytes", "client_ip", "referrer"} <= set(doc)
        assert {"level", "service", "request_id"} <= set(doc)  # fields the parser ignores
        assert datetime.fromisoformat(doc["timestamp"]).tzinfo is not None
    assert any("user_agent" not in doc for doc in docs) and any(doc["referrer"] for doc in docs)


def test_realistic_mix_of_statuses_paths_and_clients() -> None:
    generated = [g for g in lines(3_000, LogMix(json_share=0.5)) if g.kind in ("combined", "json")]
    statuses: Counter[int] = Counter()
    text = b"\n".join(g.value for g in generated).decode()
    for g in generated:
        statuses[
            json.loads(g.value)["status"] // 100 if g.value.startswith(b"{") else int(g.value.split(b'" ')[1][:1])
        ] += 1
    assert statuses[2] / sum(statuses.values()) > 0.8
    assert statuses[3] and statuses[4] and statuses[5]
    assert re.search(r"/api/orders/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-", text)  # UUIDs
    assert re.search(r"/static/js/app\.[0-9a-f]{16,}\.js", text)  # hashes
    assert re.search(r"\?[a-z_]+=", text)  # query strings
    assert re.search(r"/by-email/[a-z.-]+\.\d+@example\.com", text)
    assert any(g.key and b":" in g.key for g in generated)  # IPv6 clients
    assert any(g.key and b"." in g.key for g in generated)
    for agent in ("Googlebot", "python-requests", "curl/", "iPhone", "Android", "Edg/", "Firefox/"):
        assert agent in text, agent


def test_agents_with_quotes_and_backslashes_are_escaped_like_apache() -> None:
    escaped = [g.value for g in lines(3_000, LogMix(json_share=0.0)) if b"FeedFetcher" in g.value]
    assert escaped
    assert all(b'"FeedFetcher/3.0 (compatible; \\"RSS Reader\\"; C:\\\\feeds)"' in v for v in escaped)


def test_error_burst_is_5xx_from_one_endpoint() -> None:
    burst = [g for g in lines(1_000, LogMix(error_burst_share=0.2, json_share=0.5)) if g.kind == "error_burst"]
    assert 150 < len(burst) < 250
    for g in burst:
        if g.value.startswith(b"{"):
            doc = json.loads(g.value)
            method, path, status = doc["method"], doc["path"], doc["status"]
        else:
            match = COMBINED.match(g.value.decode())
            assert match
            method, path, status = match["method"], match["target"], int(match["status"])
        assert (method, path.rstrip("/"), status // 100) == ("POST", "/api/checkout", 5)


def test_invalid_kinds_are_really_malformed() -> None:
    generated = {g.kind: g.value for g in lines(len(INVALID_KINDS), LogMix(invalid_share=1.0))}
    assert len(generated["invalid:over_long"]) > RULES.max_line_length
    with pytest.raises(UnicodeDecodeError):
        generated["invalid:binary"].decode()
    assert not COMBINED.match(generated["invalid:truncated_combined"].decode())
    with pytest.raises(json.JSONDecodeError):
        json.loads(generated["invalid:truncated_json"])


def test_expected_rules_are_rules_the_parser_knows() -> None:
    assert {expected_rule(f"invalid:{kind}") for kind in INVALID_KINDS} <= set(ALL_RULES)
    assert expected_rule("combined") is None and expected_rule("json") is None and expected_rule("error_burst") is None


def test_endpoint_templates_are_already_templated() -> None:
    for template in endpoint_templates():
        assert not re.search(r"/\d+(/|$)", template) and (template == "/" or not template.endswith("/"))

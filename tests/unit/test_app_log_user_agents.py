"""User-agent enrichment: normalised (browser, os, device), the per-batch Arrow function, the UDF."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from spark_jobs.app_logs import transforms as T
from spark_jobs.app_logs import user_agents as UA
from tributary.catalog import APP_LOGS
from tributary.producers.app_logs import USER_AGENTS, LogMix, generate_log_lines

KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
)

AGENTS = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36": (
        "Chrome",
        "Windows",
        "Desktop",
    ),
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36 Edg/128.0.2739.42": (
        "Edge",
        "Windows",
        "Desktop",
    ),
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15": (
        "Safari",
        "Mac OS X",
        "Desktop",
    ),
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0": ("Firefox", "Linux", "Desktop"),
    "Mozilla/5.0 (X11; Fedora; Linux x86_64; rv:129.0) Gecko/20100101 Firefox/129.0": ("Firefox", "Linux", "Desktop"),
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36": (
        "Chrome",
        "Chrome OS",
        "Desktop",
    ),
    "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.6533.103 Mobile Safari/537.36": (
        "Chrome",
        "Android",
        "Mobile",
    ),
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36": (
        "Chrome",
        "Android",
        "Mobile",
    ),
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36": (
        "Chrome",
        "Android",
        "Tablet",
    ),
    "Mozilla/5.0 (Android 14; Mobile; rv:129.0) Gecko/129.0 Firefox/129.0": ("Firefox", "Android", "Mobile"),
    "Mozilla/5.0 (Android 14; Tablet; rv:129.0) Gecko/129.0 Firefox/129.0": ("Firefox", "Android", "Tablet"),
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1": (
        "Safari",
        "iOS",
        "Mobile",
    ),
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/127.0.6533.107 Mobile/15E148 Safari/604.1": (
        "Chrome",
        "iOS",
        "Mobile",
    ),
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1": (
        "Safari",
        "iOS",
        "Tablet",
    ),
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)": ("Googlebot", "Other", "Bot"),
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.6533.119 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)": (
        "Googlebot",
        "Android",
        "Bot",
    ),
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)": ("bingbot", "Other", "Bot"),
    "Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)": ("UptimeRobot", "Other", "Bot"),
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/127.0.0.0 Safari/537.36": (
        "HeadlessChrome",
        "Windows",
        "Bot",
    ),
    "curl/8.9.1": ("curl", "Other", "Other"),
    "python-requests/2.32.3": ("Python Requests", "Other", "Other"),
    "okhttp/4.12.0": ("okhttp", "Other", "Other"),
    "definitely not a browser": ("Other", "Other", "Other"),
}


@pytest.mark.parametrize("agent", list(AGENTS))
def test_real_agents_are_normalised(agent: str) -> None:
    assert tuple(UA.parse_user_agent(agent)) == AGENTS[agent]


@pytest.mark.parametrize("missing", [None, "", "-", "   "])
def test_no_agent_is_null_not_other(missing: str | None) -> None:
    assert UA.parse_user_agent(missing) == UA.NO_AGENT == (None, None, None)


def test_every_generated_agent_gets_a_known_device_class() -> None:
    for agent, _ in USER_AGENTS:
        info = UA.parse_user_agent(agent)
        assert agent is None or (info.browser and info.os and info.device in UA.DEVICES), agent


def test_huge_agents_are_parsed_by_a_bounded_prefix() -> None:
    UA._parse_cached.cache_clear()
    chrome = next(iter(AGENTS))
    assert UA.parse_user_agent(chrome + " x" * 50_000) == UA.parse_user_agent(chrome)
    assert UA._parse_cached.cache_info().currsize == 2  # the prefix and the agent, not 100 KB keys


def test_a_batch_parses_each_distinct_agent_once() -> None:
    chrome, ios = (
        next(a for a in AGENTS if AGENTS[a] == info)
        for info in (("Chrome", "Windows", "Desktop"), ("Safari", "iOS", "Tablet"))
    )
    UA._parse_cached.cache_clear()
    result = UA.user_agent_batch(pa.array([chrome, ios, chrome, None, chrome, "-", ios]))
    info = UA._parse_cached.cache_info()
    assert info.hits + info.misses == 2  # "-" and None never reach the parser
    assert result.to_pylist() == [
        dict(zip(T.UA_COLUMNS, AGENTS[chrome], strict=True)),
        dict(zip(T.UA_COLUMNS, AGENTS[ios], strict=True)),
        dict(zip(T.UA_COLUMNS, AGENTS[chrome], strict=True)),
        None,
        dict(zip(T.UA_COLUMNS, AGENTS[chrome], strict=True)),
        {"browser": None, "os": None, "device": None},
        dict(zip(T.UA_COLUMNS, AGENTS[ios], strict=True)),
    ]
    assert len(UA.user_agent_batch(pa.array([], pa.string()))) == 0


def test_enrichment_puts_the_fields_where_the_raw_table_has_them(spark: SparkSession) -> None:
    now = datetime(2026, 10, 12, 12, 0, tzinfo=UTC)
    generated = list(
        generate_log_lines(400, seed=3, start=now - timedelta(hours=1), lines_per_s=1, mix=LogMix(json_share=0.5))
    )
    kafka = spark.createDataFrame(
        [(g.key, g.value, "app_logs", 0, i, now, 0) for i, g in enumerate(generated)], KAFKA_SCHEMA
    )
    enriched = UA.enrich_user_agents(T.valid_logs(T.parse_log_lines(kafka, APP_LOGS)))
    assert tuple(enriched.columns) == T.RAW_COLUMNS
    rows = enriched.orderBy("kafka_offset").collect()
    assert len(rows) == 400
    for g, row in zip(generated, rows, strict=True):
        sent = json.loads(g.value).get("user_agent") if g.value.startswith(b"{") else None
        assert sent is None or row["user_agent"] == sent
        assert (row["browser"], row["os"], row["device"]) == tuple(UA.parse_user_agent(row["user_agent"]))
    assert {r["device"] for r in rows} >= {"Desktop", "Mobile", "Tablet", "Bot", "Other", None}

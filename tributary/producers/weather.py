"""Seeded generator of weather station readings (JSON), for the weather pipeline.

Each reading: station_id, timestamp, temperature (°C), humidity (%), wind_speed (m/s) and,
sometimes, pressure (hPa) and location. Stations follow a smooth daily temperature curve with
noise, so hourly averages look like weather. On demand: a share of late readings (older than the
10-minute watermark), out-of-order readings (late, but within the watermark) and invalid ones
of every kind the validation knows. Each record carries its kind, so tests can assert exact
counts per sink. Sending goes through `tributary.producers.user_events.produce`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tributary.catalog import WEATHER, WeatherRules
from tributary.producers.user_events import GeneratedEvent

RULES: WeatherRules = WEATHER.validation  # type: ignore[assignment]

CITIES = (
    ("Berlin, DE", 10.0),
    ("Lisbon, PT", 17.0),
    ("Austin, US", 21.0),
    ("Osaka, JP", 16.0),
    ("Lagos, NG", 27.0),
    ("Reykjavik, IS", 4.0),
    ("Pune, IN", 25.0),
    ("Toronto, CA", 8.0),
)


def _bad(doc: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**doc, **changes}).encode()


# Every kind of invalid reading, with the rule the validation must report for it.
INVALID_KINDS: dict[str, tuple[str, Callable[[dict[str, Any], random.Random], bytes]]] = {
    "not_json": ("json_object", lambda d, r: b"station=7;temp=12"),
    "truncated_json": ("json_object", lambda d, r: json.dumps(d).encode()[: r.randint(1, 30)]),
    "binary": ("payload_utf8", lambda d, r: bytes([0xFF, 0xFE]) + r.randbytes(20)),
    "missing_field": (
        "required_fields",
        lambda d, r: json.dumps({k: v for k, v in d.items() if k != "humidity"}).encode(),
    ),
    "humidity_over_100": ("humidity_range", lambda d, r: _bad(d, humidity=100.0 + r.uniform(0.1, 50))),
    "humidity_negative": ("humidity_range", lambda d, r: _bad(d, humidity=-r.uniform(0.1, 20))),
    "temperature_unphysical": ("temperature_range", lambda d, r: _bad(d, temperature=r.choice([-120.0, 75.5]))),
    "wind_negative": ("wind_speed_range", lambda d, r: _bad(d, wind_speed=-3.0)),
    "temperature_text": ("temperature_range", lambda d, r: _bad(d, temperature="warm")),
    "bad_timestamp": ("timestamp_parseable", lambda d, r: _bad(d, timestamp="yesterday noon")),
    "future_timestamp": ("timestamp_not_future", lambda d, r: _bad(d, timestamp="2099-01-01T00:00:00Z")),
    "empty_station": ("station_id_present", lambda d, r: _bad(d, station_id="")),
    # '*' is the summary's all-stations row; a station must not claim it.
    "reserved_station": ("station_id_present", lambda d, r: _bad(d, station_id="*")),
}


@dataclass(frozen=True)
class ReadingMix:
    """What to generate besides ordinary on-time readings (shares are of the total count)."""

    stations: int = 200
    invalid_share: float = 0.0
    # Late: older than the watermark (10 min) when sent; kept aside by the job, not averaged.
    late_share: float = 0.0
    late_by_s: int = 1_800
    # Out of order: behind the newest reading, but within the watermark; still averaged.
    out_of_order_share: float = 0.0
    out_of_order_by_s: int = 240


def station_id(n: int) -> str:
    return f"ST{n:05d}"


def generate_readings(
    count: int, *, seed: int, start: datetime, readings_per_s: float, mix: ReadingMix
) -> Iterator[GeneratedEvent]:
    """`count` readings with times from `start`, `readings_per_s` apart; deterministic per seed."""
    rng = random.Random(seed)
    invalid_kinds = list(INVALID_KINDS)
    step = timedelta(seconds=1 / readings_per_s)
    for i in range(count):
        reading_time = start + i * step
        station = rng.randint(1, mix.stations)
        city, mean_c = CITIES[station % len(CITIES)]
        roll = rng.random()
        kind = "valid"
        if roll < mix.late_share:
            kind, reading_time = "late", reading_time - timedelta(seconds=mix.late_by_s)
        elif roll < mix.late_share + mix.out_of_order_share:
            kind, reading_time = "out_of_order", reading_time - timedelta(seconds=mix.out_of_order_by_s)
        elif roll < mix.late_share + mix.out_of_order_share + mix.invalid_share:
            kind = "invalid:" + invalid_kinds[i % len(invalid_kinds)]
        hour = reading_time.hour + reading_time.minute / 60
        daily = 6.0 * math.sin((hour - 9) / 24 * 2 * math.pi)  # warmest mid-afternoon
        doc: dict[str, Any] = {
            "station_id": station_id(station),
            "timestamp": reading_time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "temperature": round(mean_c + daily + rng.gauss(0, 1.5), 2),
            "humidity": round(min(100.0, max(0.0, rng.gauss(65, 15))), 1),
            "wind_speed": round(abs(rng.gauss(4, 2.5)), 2),
        }
        if station % 3:
            doc["pressure"] = round(rng.gauss(1013, 8), 1)
            doc["location"] = city
        key = doc["station_id"].encode()
        if kind.startswith("invalid:"):
            yield GeneratedEvent(kind, key, INVALID_KINDS[kind.removeprefix("invalid:")][1](doc, rng), reading_time)
        else:
            yield GeneratedEvent(kind, key, json.dumps(doc).encode(), reading_time)


def expected_rule(kind: str) -> str | None:
    """The validation rule a reading of `kind` must fail (None for kinds that are valid)."""
    return INVALID_KINDS[kind.removeprefix("invalid:")][0] if kind.startswith("invalid:") else None

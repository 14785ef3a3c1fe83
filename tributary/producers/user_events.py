"""Seeded generator and rate-controlled producer of user activity events.

The message format is the seed's JSON: user_id, product_id, action, timestamp, device_id,
device_type, location, user_segment, ip_address. On demand a share of invalid records (every kind
the validation knows), late events and bursts from chosen users (to trigger anomalies); each
generated record carries its kind, so tests and benchmarks can assert exact counts per sink.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from tributary.catalog import USER_EVENTS

log = logging.getLogger(__name__)

ACTIONS: tuple[str, ...] = USER_EVENTS.validation.allowed_actions  # type: ignore[union-attr]
ACTION_WEIGHTS = {
    "view": 50,
    "click": 20,
    "search": 10,
    "add_to_cart": 8,
    "remove_from_cart": 3,
    "purchase": 4,
    "login": 3,
    "logout": 2,
}
DEVICE_TYPES = ("mobile", "desktop", "tablet")
LOCATIONS = (
    "Berlin, DE",
    "Lisbon, PT",
    "Austin, US",
    "Osaka, JP",
    "Lagos, NG",
    "São Paulo, BR",
    "Pune, IN",
    "Toronto, CA",
)
SEGMENTS = ("new", "regular", "premium", "churn_risk")
REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south", "sa-east")
FIRST_NAMES = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Alan", "Radia")
LAST_NAMES = ("Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen", "Kay", "Perlman")


def _bad(doc: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**doc, **changes}).encode()


# Every kind of invalid record, with the rule the validation must report for it.
INVALID_KINDS: dict[str, tuple[str, Callable[[dict[str, Any], random.Random], bytes]]] = {
    "not_json": ("json_object", lambda d, r: b"user_id=7&action=view"),
    "truncated_json": ("json_object", lambda d, r: json.dumps(d).encode()[: r.randint(1, 40)]),
    "json_array": ("json_object", lambda d, r: json.dumps([d]).encode()),
    "empty": ("json_object", lambda d, r: b""),
    "binary": ("payload_utf8", lambda d, r: bytes([0xFF, 0xFE]) + r.randbytes(30)),
    "missing_field": (
        "required_fields",
        lambda d, r: json.dumps({k: v for k, v in d.items() if k != "product_id"}).encode(),
    ),
    "wrong_type_user_id": ("user_id_positive", lambda d, r: _bad(d, user_id=str(d["user_id"]) + "x")),
    "zero_user_id": ("user_id_positive", lambda d, r: _bad(d, user_id=0)),
    "negative_product_id": ("product_id_positive", lambda d, r: _bad(d, product_id=-d["product_id"])),
    "unknown_action": ("action_allowed", lambda d, r: _bad(d, action="teleport")),
    "bad_timestamp": ("timestamp_parseable", lambda d, r: _bad(d, timestamp="31/02/2026 25:61")),
    "future_timestamp": ("timestamp_not_future", lambda d, r: _bad(d, timestamp="2099-01-01T00:00:00Z")),
    "long_location": ("location_length", lambda d, r: _bad(d, location="x" * 201)),
    "huge_string": ("string_length", lambda d, r: _bad(d, device_id="d" * 100_000)),
    "bad_ip": ("ip_valid", lambda d, r: _bad(d, ip_address="300.1.2.3")),
}


@dataclass(frozen=True)
class EventMix:
    """What to generate besides ordinary valid events (shares are of the total count)."""

    users: int = 1_000
    products: int = 5_000
    invalid_share: float = 0.0
    late_share: float = 0.0
    late_by_s: int = 900
    burst_users: tuple[int, ...] = ()
    burst_share: float = 0.0


@dataclass(frozen=True)
class GeneratedEvent:
    kind: str  # "valid", "late", "burst" or "invalid:<kind>"
    key: bytes | None
    value: bytes
    event_time: datetime


def generate_events(
    count: int, *, seed: int, start: datetime, events_per_s: float, mix: EventMix
) -> Iterator[GeneratedEvent]:
    """`count` events with event times from `start`, `events_per_s` apart; deterministic per seed."""
    rng = random.Random(seed)
    actions, weights = zip(*ACTION_WEIGHTS.items(), strict=True)
    invalid_kinds = list(INVALID_KINDS)
    step = timedelta(seconds=1 / events_per_s)
    for i in range(count):
        event_time = start + i * step
        roll = rng.random()
        kind = "valid"
        user_id = rng.randint(1, mix.users)
        if roll < mix.burst_share and mix.burst_users:
            kind, user_id = "burst", mix.burst_users[i % len(mix.burst_users)]
        elif roll < mix.burst_share + mix.late_share:
            kind, event_time = "late", event_time - timedelta(seconds=mix.late_by_s)
        elif roll < mix.burst_share + mix.late_share + mix.invalid_share:
            kind = "invalid:" + invalid_kinds[i % len(invalid_kinds)]
        doc = {
            "user_id": user_id,
            "product_id": rng.randint(1, mix.products),
            "action": rng.choices(actions, weights)[0],
            "timestamp": event_time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "device_id": f"dev-{user_id}-{rng.randint(1, 3)}",
            "device_type": rng.choice(DEVICE_TYPES),
            "location": rng.choice(LOCATIONS),
            "user_segment": SEGMENTS[user_id % len(SEGMENTS)],
            "ip_address": f"10.{user_id % 256}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        }
        if kind.startswith("invalid:"):
            value = INVALID_KINDS[kind.removeprefix("invalid:")][1](doc, rng)
            yield GeneratedEvent(kind, None, value, event_time)
        else:
            yield GeneratedEvent(kind, str(user_id).encode(), json.dumps(doc).encode(), event_time)


def expected_rule(kind: str) -> str | None:
    """The validation rule an event of `kind` must fail (None for valid kinds)."""
    return INVALID_KINDS[kind.removeprefix("invalid:")][0] if kind.startswith("invalid:") else None


def user_rows(users: int, seed: int = 7) -> list[tuple[int, str, str, str, str]]:
    """(user_id, name, email, region, segment) for the users table, deterministic."""
    rng = random.Random(seed)
    rows = []
    for user_id in range(1, users + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        rows.append(
            (
                user_id,
                f"{first} {last}",
                f"{first}.{last}.{user_id}@example.com".lower(),
                rng.choice(REGIONS),
                SEGMENTS[user_id % len(SEGMENTS)],
            )
        )
    return rows


@dataclass
class ProduceReport:
    produced: int = 0
    failed: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.produced / self.seconds if self.seconds else 0.0


def produce(
    events: Iterator[GeneratedEvent],
    *,
    producer_config: dict[str, Any],
    topic: str,
    rate: float | None = None,
    progress_every_s: float = 5.0,
    on_progress: Callable[[ProduceReport], None] | None = None,
) -> ProduceReport:
    """Send `events` to `topic`, at most `rate` per second (None: as fast as possible)."""
    config = {"linger.ms": 20, "batch.num.messages": 10_000, "queue.buffering.max.messages": 500_000, **producer_config}
    producer = Producer(config)
    report = ProduceReport()
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            report.failed += 1
            if len(errors) < 5:
                errors.append(str(err))

    started = last_progress = time.monotonic()
    for i, event in enumerate(events):
        if rate:
            ahead = (i / rate) - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, value=event.value, key=event.key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        report.by_kind[event.kind] = report.by_kind.get(event.kind, 0) + 1
        report.produced += 1
        if i % 1000 == 0:
            producer.poll(0)
        if on_progress and time.monotonic() - last_progress >= progress_every_s:
            report.seconds = time.monotonic() - started
            on_progress(report)
            last_progress = time.monotonic()
    remaining = producer.flush(60)
    report.seconds = time.monotonic() - started
    if remaining or report.failed:
        raise RuntimeError(
            f"{report.failed + remaining} of {report.produced} messages were not delivered to {topic} "
            f"(e.g. {errors[:3]}); check TRIBUTARY_KAFKA_BOOTSTRAP and that the topic exists (tributary provision)"
        )
    return report

"""Seeded generator of access and API log lines, for the app_logs pipeline.

Two shapes, as `spark_jobs.app_logs.transforms` parses them:

- combined: Apache/nginx combined log format in three flavours a fleet really mixes: Apache's
  `combined`; nginx `combined` followed by `$request_time` in seconds (` 0.043`); nginx's default
  `main` (combined plus a quoted `"$http_x_forwarded_for"`). Servers log local time, so the
  timestamps carry offsets other than +0000. Bytes 0 is written '-' (Apache's `%b`).
- json: an API gateway's line, `{"timestamp", "method", "path", "status", "latency_ms", "bytes",
  "client_ip", "user_agent", "referrer"}` plus fields the pipeline ignores (level, service,
  request_id).

Paths carry numeric ids, UUIDs, hex hashes, emails, tokens and query strings; clients are IPv4
and IPv6 addresses, each with one real-looking user agent (browsers on every platform, HTTP
libraries, crawlers); statuses are mostly 2xx. On demand: an error burst (5xx from one endpoint)
and malformed lines of every kind the parser knows. Each record carries its kind ("combined",
"json", "error_burst" or "invalid:<kind>"), so tests can assert exact counts per sink. Sending
goes through `tributary.producers.user_events.produce`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tributary.catalog import APP_LOGS, AppLogRules
from tributary.producers.user_events import GeneratedEvent

RULES: AppLogRules = APP_LOGS.validation  # type: ignore[assignment]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# UTC offsets, in minutes, of the servers writing combined logs (local time, as servers do).
SERVER_OFFSETS_MIN = (0, 0, 60, 120, -300, -420, 330, 540, 345)
COMBINED_FLAVOURS = ("apache", "nginx_timed", "nginx_main")


@dataclass(frozen=True)
class Endpoint:
    """A route: its method, path template (as the parser's `template_path` writes it), traffic
    weight, status mix and typical latency."""

    method: str
    template: str
    weight: int
    statuses: tuple[tuple[int, int], ...]
    median_ms: float
    median_bytes: int
    queries: tuple[str, ...] = ()


_API_GET = ((200, 930), (304, 15), (404, 30), (401, 8), (429, 5), (500, 5), (503, 4), (502, 3))
_API_WRITE = ((201, 850), (400, 60), (401, 20), (409, 20), (422, 30), (500, 12), (503, 8))
_STATIC = ((200, 700), (304, 280), (404, 20))

ENDPOINTS = (
    Endpoint("GET", "/api/products", 12, _API_GET, 45, 18_000, ("page={n}&per_page=50", "q=running+shoes&sort=price")),
    Endpoint("GET", "/api/products/{id}", 15, _API_GET, 25, 2_400),
    Endpoint("GET", "/api/users/{id}", 8, _API_GET, 20, 900),
    Endpoint("GET", "/api/users/{id}/orders", 5, _API_GET, 60, 6_500, ("status=open", "page={n}")),
    Endpoint("PUT", "/api/users/{id}", 2, ((200, 900), (400, 60), (409, 30), (500, 10)), 70, 900),
    Endpoint("GET", "/api/users/by-email/{email}", 1, _API_GET, 30, 900),
    Endpoint("POST", "/api/orders", 4, _API_WRITE, 120, 1_200),
    Endpoint("GET", "/api/orders/{uuid}", 5, _API_GET, 35, 1_800),
    Endpoint("DELETE", "/api/orders/{uuid}", 1, ((204, 900), (404, 80), (500, 20)), 40, 0),
    Endpoint("POST", "/api/checkout", 3, ((200, 900), (402, 50), (409, 30), (500, 20)), 250, 700),
    Endpoint("POST", "/auth/login", 3, ((200, 800), (401, 170), (429, 30)), 90, 400),
    Endpoint("GET", "/auth/reset/{token}", 1, ((200, 900), (410, 100)), 30, 3_000),
    Endpoint("GET", "/static/js/app.{hash}.js", 6, _STATIC, 4, 250_000),
    Endpoint("GET", "/static/img/products/{id}.jpg", 6, _STATIC, 6, 80_000, ("w=640",)),
    Endpoint("GET", "/files/{hash}", 1, _STATIC, 15, 1_500_000),
    Endpoint("GET", "/", 4, ((200, 950), (304, 50)), 30, 12_000, ("utm_source=newsletter&utm_medium=email",)),
    Endpoint("HEAD", "/", 1, ((200, 1),), 5, 0),
    Endpoint("OPTIONS", "/api/products", 1, ((204, 1),), 2, 0),
    Endpoint("GET", "/health", 5, ((200, 995), (503, 5)), 2, 15),
    Endpoint("GET", "/robots.txt", 1, ((200, 1),), 2, 120),
    Endpoint("GET", "/favicon.ico", 1, ((200, 800), (404, 200)), 2, 1_150),
)
ERROR_STATUSES = ((500, 50), (502, 25), (503, 15), (504, 10))

# (user agent or None, weight); clients keep theirs, so agents repeat like in real traffic.
USER_AGENTS: tuple[tuple[str | None, int], ...] = (
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
        25,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
        8,
    ),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36", 3),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        6,
    ),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:129.0) Gecko/20100101 Firefox/129.0", 5),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", 2),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36 Edg/128.0.2739.42",
        6,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.6533.103 Mobile Safari/537.36",
        9,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Mobile Safari/537.36",
        5,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36",
        2,
    ),
    ("Mozilla/5.0 (Android 14; Mobile; rv:129.0) Gecko/129.0 Firefox/129.0", 1),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        12,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        3,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/127.0.6533.107 Mobile/15E148 Safari/604.1",
        2,
    ),
    ("curl/8.9.1", 2),
    ("python-requests/2.32.3", 2),
    ("Go-http-client/1.1", 1),
    ("okhttp/4.12.0", 2),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 2),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 1),
    ("Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", 1),
    # Quotes and a backslash: Apache writes them escaped (\" and \\), the parser undoes that.
    ('FeedFetcher/3.0 (compatible; "RSS Reader"; C:\\feeds)', 1),
    (None, 1),
)
REFERRERS = (
    "https://www.google.com/",
    "https://shop.example.com/products?page=2",
    "https://t.co/Xk3mP9qL2w",
    "android-app://com.google.android.gm/",
)
USERS = ("alice", "bob", "svc-reports")


@dataclass(frozen=True)
class LogMix:
    """What to generate (shares are of the total count; error bursts, then invalid lines, first)."""

    clients: int = 500
    # Of the ordinary lines: the share written as JSON; the rest are combined.
    json_share: float = 0.3
    invalid_share: float = 0.0
    # Lines that are 5xx answers of `error_endpoint` (an incident), kind "error_burst".
    error_burst_share: float = 0.0
    error_endpoint: tuple[str, str] = ("POST", "/api/checkout")
    ipv6_share: float = 0.25


@dataclass(frozen=True)
class Request:
    """One logged request, before it is written as a line of either shape."""

    time: datetime
    utc_offset_min: int
    client_ip: str
    user: str | None
    method: str
    target: str
    status: int
    bytes: int
    latency_ms: float
    referrer: str | None
    user_agent: str | None
    request_id: str
    flavour: str
    forwarded_for: str | None


def _clf_time(t: datetime, offset_min: int) -> str:
    """`10/Oct/2026:13:55:36 +0200` (English month names whatever the locale)."""
    local = t.astimezone(timezone(timedelta(minutes=offset_min)))
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return f"{local:%d}/{_MONTHS[local.month - 1]}/{local:%Y:%H:%M:%S} {sign}{hours:02d}{minutes:02d}"


def _quoted(value: str | None) -> str:
    """A combined-format quoted field, escaped as Apache does ('-' for none)."""
    if value is None:
        return '"-"'
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def combined_line(r: Request, *, time_text: str | None = None, status_text: str | None = None) -> str:
    """The request as a combined log line in its flavour (fields overridable for invalid lines)."""
    size = str(r.bytes) if r.bytes else "-"
    line = (
        f"{r.client_ip} - {r.user or '-'} [{time_text or _clf_time(r.time, r.utc_offset_min)}] "
        f'"{r.method} {r.target} HTTP/1.1" {status_text or r.status} {size} {_quoted(r.referrer)} {_quoted(r.user_agent)}'
    )
    if r.flavour == "nginx_main":
        line += " " + _quoted(r.forwarded_for)
    elif r.flavour == "nginx_timed":
        line += f" {r.latency_ms / 1000:.3f}"
    return line


def json_document(r: Request) -> dict[str, Any]:
    """The request as an API gateway's JSON log object."""
    doc: dict[str, Any] = {
        "timestamp": r.time.astimezone(timezone(timedelta(minutes=r.utc_offset_min)))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": "error" if r.status >= 500 else "info",
        "service": "api-gateway",
        "method": r.method,
        "path": r.target,
        "status": r.status,
        "latency_ms": r.latency_ms,
        "bytes": r.bytes,
        "client_ip": r.client_ip,
        "request_id": r.request_id,
    }
    if r.user_agent is not None:
        doc["user_agent"] = r.user_agent
    doc["referrer"] = r.referrer  # null when there is none
    return doc


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _without(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    missing = rng.choice(("timestamp", "method", "path", "status"))
    return {k: v for k, v in doc.items() if k != missing}


def _truncated_combined(r: Request, rng: random.Random) -> bytes:
    # Cut before the user agent's closing quote: no prefix of that is a whole combined line.
    line = combined_line(replace(r, flavour="apache"))
    return line[: rng.randint(5, len(line) - 1)].encode()


# Every kind of malformed line, with the rule the parser must report for it (and only that one).
INVALID_KINDS: dict[str, tuple[str, Callable[[Request, random.Random], bytes]]] = {
    "garbage": (
        "unparseable_line",
        lambda r, g: g.choice([b"Connection reset by peer", b"<html><body>502 Bad Gateway</body></html>", b"GET /"]),
    ),
    "truncated_combined": ("unparseable_line", _truncated_combined),
    "truncated_json": ("unparseable_line", lambda r, g: (s := _json(json_document(r)))[: g.randint(1, len(s) - 1)]),
    "json_array": ("unparseable_line", lambda r, g: b"[" + _json(json_document(r)) + b"]"),
    "empty": ("unparseable_line", lambda r, g: g.choice([b"", b"\n", b" \t "])),
    "binary": ("payload_utf8", lambda r, g: bytes([0xFF, 0xFE]) + g.randbytes(40)),
    # Valid UTF-8, but PostgreSQL text cannot hold NUL (JSON writes it as \u0000).
    "nul_character": ("payload_utf8", lambda r, g: _json({**json_document(r), "user_agent": "curl\x00/8.0"})),
    "over_long": (
        "line_length",
        lambda r, g: combined_line(replace(r, target="/search?q=" + "a" * (RULES.max_line_length + 1))).encode(),
    ),
    "missing_field": ("required_fields", lambda r, g: _json(_without(json_document(r), g))),
    "tls_handshake": (
        "request_line",
        lambda r, g: (
            f'{r.client_ip} - - [{_clf_time(r.time, 0)}] "\\x16\\x03\\x01\\x02\\x00\\x01" 400 157 "-" "-"'.encode()
        ),
    ),
    "no_request": (
        "request_line",
        lambda r, g: f'{r.client_ip} - - [{_clf_time(r.time, 0)}] "-" 408 0 "-" "-"'.encode(),
    ),
    "bad_method": ("method_valid", lambda r, g: _json({**json_document(r), "method": g.choice(["G3T", "P@ST", ""])})),
    "relative_path": ("path_valid", lambda r, g: _json({**json_document(r), "path": "index.html"})),
    "bad_status_combined": (
        "status_valid",
        lambda r, g: combined_line(r, status_text=g.choice(["999", "2OO", "42"])).encode(),
    ),
    "bad_status_json": (
        "status_valid",
        lambda r, g: _json({**json_document(r), "status": g.choice([700, "OK", 20.5])}),
    ),
    "bad_timestamp_combined": (
        "timestamp_parseable",
        lambda r, g: combined_line(r, time_text="32/Foo/2026:25:61:00 +0000").encode(),
    ),
    "bad_timestamp_json": (
        "timestamp_parseable",
        lambda r, g: _json({**json_document(r), "timestamp": g.choice(["yesterday noon", "2026-13-45T99:00:00Z"])}),
    ),
    "future_timestamp": (
        "timestamp_not_future",
        lambda r, g: _json({**json_document(r), "timestamp": "2099-01-01T00:00:00Z"}),
    ),
    "bad_client_ip": (
        "client_ip_valid",
        lambda r, g: combined_line(
            replace(r, client_ip=g.choice(["999.12.1.1", "crawl-66-249-66-1.googlebot.com"]))
        ).encode(),
    ),
    "bad_latency": ("latency_valid", lambda r, g: _json({**json_document(r), "latency_ms": g.choice([-3.5, "fast"])})),
    "bad_bytes": ("bytes_valid", lambda r, g: _json({**json_document(r), "bytes": g.choice([-1, "lots", 1.5])})),
}


class _Traffic:
    """Draws requests: a fixed pool of clients, endpoints by weight, realistic sizes and times."""

    def __init__(self, rng: random.Random, mix: LogMix) -> None:
        self.rng = rng
        self.mix = mix
        agents, agent_weights = zip(*USER_AGENTS, strict=True)
        self.clients = [
            (
                self._client_ip(),
                rng.choices(agents, agent_weights)[0],
                rng.choice(USERS) if rng.random() < 0.03 else None,
            )
            for _ in range(mix.clients)
        ]
        self.endpoint_weights = [e.weight for e in ENDPOINTS]
        method, template = mix.error_endpoint
        self.error_endpoint = next(
            (e for e in ENDPOINTS if (e.method, e.template) == (method, template)),
            Endpoint(method, template, 0, ERROR_STATUSES, 100, 300),
        )

    def _client_ip(self) -> str:
        rng = self.rng
        if rng.random() < self.mix.ipv6_share:
            # 2001:db8::/32 (documentation), written in canonical compressed form.
            return str(ipaddress.IPv6Address((0x20010DB8 << 96) | rng.getrandbits(64) << rng.choice((0, 16, 32))))
        first = rng.choice([n for n in range(1, 224) if n not in (10, 127)])
        return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"

    def request(self, t: datetime, *, error_burst: bool = False) -> Request:
        rng = self.rng
        ip, agent, user = rng.choice(self.clients)
        statuses: tuple[tuple[int, int], ...]
        if error_burst:
            endpoint, statuses = self.error_endpoint, ERROR_STATUSES
        else:
            endpoint = rng.choices(ENDPOINTS, self.endpoint_weights)[0]
            statuses = endpoint.statuses
        codes, code_weights = zip(*statuses, strict=True)
        status = rng.choices(codes, code_weights)[0]
        latency = endpoint.median_ms * math.exp(rng.gauss(0, 0.6))
        if status == 504:
            latency = rng.uniform(30_000, 60_000)
        no_body = status in (204, 304) or endpoint.method == "HEAD"
        size = 0 if no_body else max(1, round(endpoint.median_bytes * math.exp(rng.gauss(0, 0.4))))
        if status >= 400 and not no_body:
            size = rng.randint(60, 400)  # an error document, not the resource
        browser = agent is not None and agent.startswith("Mozilla/5.0 (") and "compatible" not in agent
        return Request(
            time=t,
            utc_offset_min=rng.choice(SERVER_OFFSETS_MIN),
            client_ip=ip,
            user=user,
            method=endpoint.method,
            target=self._target(endpoint),
            status=status,
            bytes=size,
            latency_ms=round(latency, 3),
            referrer=rng.choice(REFERRERS) if browser and rng.random() < 0.6 else None,
            user_agent=agent,
            request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            flavour=rng.choice(COMBINED_FLAVOURS),
            forwarded_for=ip if rng.random() < 0.3 else None,
        )

    def _target(self, endpoint: Endpoint) -> str:
        rng = self.rng
        path = re.sub(r"\{(\w+)\}", lambda m: self._placeholder(m.group(1)), endpoint.template)
        if path != "/" and rng.random() < 0.05:
            path += "/"  # clients add a trailing slash now and then; the template drops it
        if endpoint.queries and rng.random() < 0.4:
            path += "?" + rng.choice(endpoint.queries).replace("{n}", str(rng.randint(1, 40)))
        return path

    def _placeholder(self, name: str) -> str:
        rng = self.rng
        if name == "id":
            return str(rng.randint(1, 10 ** rng.randint(1, 7)))
        if name == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if name == "hash":
            digest = f"{rng.getrandbits(160):040x}"[: rng.choice((16, 20, 32, 40))]
            # An all-digit segment is an id to the parser; real digests of this length never are.
            return "a" + digest[1:] if digest.isdigit() else digest
        if name == "email":
            return f"{rng.choice(USERS)}.{rng.randint(1, 999)}@example.com"
        if name == "token":
            return _token(rng)
        raise ValueError(f"endpoint placeholder {{{name}}} has no generator; add it to _Traffic._placeholder")


def _token(rng: random.Random) -> str:
    """A 43-character URL-safe token with digits and both letter cases (like a reset link's)."""
    alphabet = string.ascii_letters + string.digits + "-_"
    body = [rng.choice(alphabet) for _ in range(40)]
    return (
        "".join(body)
        + rng.choice(string.ascii_lowercase)
        + rng.choice(string.ascii_uppercase)
        + rng.choice(string.digits)
    )


def generate_log_lines(
    count: int, *, seed: int, start: datetime, lines_per_s: float, mix: LogMix
) -> Iterator[GeneratedEvent]:
    """`count` log lines with times from `start`, `1 / lines_per_s` apart; deterministic per seed.

    Keys are the client IP (ASCII) of well-formed lines and None for malformed ones.
    """
    rng = random.Random(seed)
    traffic = _Traffic(rng, mix)
    invalid_kinds = list(INVALID_KINDS)
    step = timedelta(seconds=1 / lines_per_s)
    for i in range(count):
        t = (start + i * step).astimezone(UTC)
        roll = rng.random()
        if roll < mix.error_burst_share:
            kind = "error_burst"
        elif roll < mix.error_burst_share + mix.invalid_share:
            kind = "invalid:" + invalid_kinds[i % len(invalid_kinds)]
        else:
            kind = "json" if rng.random() < mix.json_share else "combined"
        request = traffic.request(t, error_burst=kind == "error_burst")
        if kind.startswith("invalid:"):
            value = INVALID_KINDS[kind.removeprefix("invalid:")][1](request, rng)
            yield GeneratedEvent(kind, None, value, t)
            continue
        as_json = kind == "json" or (kind == "error_burst" and rng.random() < mix.json_share)
        value = _json(json_document(request)) if as_json else combined_line(request).encode()
        yield GeneratedEvent(kind, request.client_ip.encode(), value, t)


def expected_rule(kind: str) -> str | None:
    """The rule a line of `kind` must fail (None for well-formed kinds)."""
    return INVALID_KINDS[kind.removeprefix("invalid:")][0] if kind.startswith("invalid:") else None


def endpoint_templates() -> set[str]:
    """Every path template the generator's well-formed lines have."""
    return {e.template for e in ENDPOINTS}

"""User-agent enrichment: browser, os and device of each log line, with the `ua-parser` package.

ua-parser (uap-core's regexes; the `regex` extra brings a Rust matcher) names families finely
("Chrome Mobile iOS", "Ubuntu"); dashboards want few, stable values, so they are normalised:

- browser: the browser, whatever the platform ("Chrome Mobile", "Chrome Mobile iOS" and Android
  WebViews are "Chrome"; "Mobile Safari" is "Safari"; "Firefox iOS" is "Firefox"; "Edge Mobile"
  is "Edge"); other clients keep ua-parser's family ("curl", "Python Requests", "Googlebot").
- os: "Windows", "Mac OS X", "iOS", "Android", "Chrome OS", "Linux" (every distribution), ...;
  ua-parser's family otherwise.
- device: "Desktop", "Mobile", "Tablet", "Bot" (crawlers and monitors, which uap-core marks as
  device "Spider", and headless browsers) or "Other" (HTTP libraries, CLIs, unknown agents).

What cannot be recognised is "Other". A line without a user agent (null, '' or '-' in the log)
gets null for all three: "no agent sent" stays apart from "an agent nobody knows".
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import pyarrow as pa
import ua_parser
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from spark_jobs.app_logs.transforms import UA_COLUMNS

OTHER = "Other"
DEVICES = ("Desktop", "Mobile", "Tablet", "Bot", OTHER)
# Real agents are under ~400 characters; parsing (and caching) a bounded prefix keeps a flood of
# huge distinct agents from costing time or memory. The platform and browser come first anyway.
MAX_PARSED_LENGTH = 1_024
CACHE_SIZE = 16_384

_BROWSERS = {
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Chrome Mobile WebView": "Chrome",
    "Mobile Safari": "Safari",
    "Mobile Safari UI/WKWebView": "Safari",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
    "IE Mobile": "IE",
}
_LINUX_DISTRIBUTIONS = frozenset(
    {"Ubuntu", "Kubuntu", "Debian", "Fedora", "Red Hat", "CentOS", "Linux Mint", "Arch Linux", "openSUSE", "Gentoo"}
)
_DESKTOP_OS = frozenset({"Windows", "Mac OS X", "Linux", "Chrome OS", "FreeBSD", "OpenBSD", "NetBSD", "Solaris"})
_MOBILE_OS = frozenset({"iOS", "Windows Phone", "BlackBerry OS", "KaiOS", "Symbian OS", "Firefox OS"})
_TABLET_DEVICES = frozenset({"iPad", "Kindle", "Generic Tablet"})
_HEADLESS_BROWSERS = frozenset({"HeadlessChrome", "PhantomJS"})


class UserAgentInfo(NamedTuple):
    browser: str | None
    os: str | None
    device: str | None


NO_AGENT = UserAgentInfo(None, None, None)


def parse_user_agent(user_agent: str | None) -> UserAgentInfo:
    """(browser, os, device) of a user agent string, normalised (see the module docstring)."""
    if user_agent is None:
        return NO_AGENT
    agent = user_agent.strip()
    if agent in ("", "-"):
        return NO_AGENT
    return _parse_cached(agent[:MAX_PARSED_LENGTH])


@lru_cache(maxsize=CACHE_SIZE)
def _parse_cached(agent: str) -> UserAgentInfo:
    # One cache per Python worker; Spark reuses workers across batches, so it stays warm.
    result = ua_parser.parse(agent)
    browser = result.user_agent.family if result.user_agent else OTHER
    os = result.os.family if result.os else OTHER
    os = "Linux" if os in _LINUX_DISTRIBUTIONS else os
    return UserAgentInfo(_BROWSERS.get(browser, browser), os, _device_class(agent, result, browser, os))


def _device_class(agent: str, result: ua_parser.Result, browser: str, os: str) -> str:
    device = result.device
    if (device is not None and device.family == "Spider") or browser in _HEADLESS_BROWSERS:
        return "Bot"
    if device is not None and (device.family in _TABLET_DEVICES or device.brand == "Generic_Android_Tablet"):
        return "Tablet"
    if os == "Android":
        # Android browsers say "Mobile" on phones and leave it out on tablets (Google's guidance).
        return "Mobile" if "Mobile" in agent else "Tablet"
    if os in _MOBILE_OS or (device is not None and device.family == "Generic Smartphone"):
        return "Mobile"
    if os in _DESKTOP_OS:
        return "Desktop"
    return OTHER


# A type object, not a DDL string: parsing DDL needs a running SparkContext, and this is built on import.
UA_STRUCT = StructType([StructField(name, StringType()) for name in UA_COLUMNS])


def user_agent_batch(user_agents: pa.Array) -> pa.Array:
    """browser, os and device for an Arrow array of user agents, parsing each distinct one once.

    Agents repeat heavily (a client keeps its agent), so a batch holds few distinct ones.
    """
    encoded = user_agents.dictionary_encode()  # the distinct agents + one index per row (null stays null)
    parsed = [parse_user_agent(agent) for agent in encoded.dictionary.to_pylist()]
    per_agent = pa.StructArray.from_arrays(
        [pa.array([info[i] for info in parsed], pa.string()) for i in range(len(UA_COLUMNS))],
        names=list(UA_COLUMNS),
    )
    return per_agent.take(encoded.indices)


# The type hints make it a scalar Arrow UDF (PySpark warns when the type is passed instead; the
# stubs only know that older form).
_user_agent_udf = F.arrow_udf(user_agent_batch, UA_STRUCT)  # type: ignore[call-overload]


def user_agent_fields(user_agent: Column) -> Column:
    """A struct<browser, os, device> column of a user agent column (an Arrow UDF)."""
    return _user_agent_udf(user_agent)


def enrich_user_agents(logs: DataFrame, user_agent_column: str = "user_agent") -> DataFrame:
    """`logs` with browser, os and device (strings) right after the user agent column.

    With `valid_logs` output that is the raw table's column order (`transforms.RAW_COLUMNS`).
    """
    columns = logs.columns
    at = columns.index(user_agent_column) + 1
    with_fields = logs.select("*", user_agent_fields(F.col(user_agent_column)).alias("_ua"))
    return with_fields.select(*columns[:at], *(F.col(f"_ua.{name}").alias(name) for name in UA_COLUMNS), *columns[at:])

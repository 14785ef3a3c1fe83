"""Building blocks of every pipeline's validation: rule columns and the patterns they share.

A parse function turns each rule into a column that is the rule's name when the record fails
it and null otherwise; `F.array_compact(F.array(...))` of those is the record's `violations`.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import Column
from pyspark.sql import functions as F

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_H16 = r"[0-9a-fA-F]{1,4}"
# Full and compressed IPv6 forms, optionally ending in an embedded IPv4 address; every string it
# accepts is also accepted by PostgreSQL's inet type (tests check it against both).
_IPV6 = (
    rf"(({_H16}:){{7}}{_H16}"
    rf"|({_H16}:){{1,7}}:"
    rf"|({_H16}:){{1,6}}:{_H16}"
    rf"|({_H16}:){{1,5}}(:{_H16}){{1,2}}"
    rf"|({_H16}:){{1,4}}(:{_H16}){{1,3}}"
    rf"|({_H16}:){{1,3}}(:{_H16}){{1,4}}"
    rf"|({_H16}:){{1,2}}(:{_H16}){{1,5}}"
    rf"|{_H16}:(:{_H16}){{1,6}}"
    rf"|:((:{_H16}){{1,7}}|:)"
    rf"|({_H16}:){{6}}{_IPV4}"
    rf"|::(ffff(:0{{1,4}})?:)?{_IPV4}"
    rf"|({_H16}:){{1,5}}:{_IPV4})"
)
IP_PATTERN = rf"^({_IPV4}|{_IPV6})$"


def failed(rule: str, passes: Column) -> Column:
    """The rule's name when `passes` is false or unknown, else null."""
    return F.when(~F.coalesce(passes, F.lit(False)), F.lit(rule))


def all_of(columns: Iterable[Column]) -> Column:
    """True when every column is."""
    result = F.lit(True)
    for column in columns:
        result = result & column
    return result


def storable_json_text(value: Column) -> Column:
    """A binary JSON payload is text PostgreSQL can store: present, valid UTF-8, no `\\u0000`.

    PostgreSQL text cannot hold NUL: one in a stored string would fail the whole batch's COPY.
    """
    text = value.cast("string")
    return value.isNotNull() & F.try_validate_utf8(text).isNotNull() & ~text.contains("\\u0000")

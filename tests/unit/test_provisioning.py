from __future__ import annotations

import pytest

from tributary.bootstrap import summarize
from tributary.catalog import USER_EVENTS
from tributary.clients import plain_pg_url
from tributary.migrations import yoyo_url
from tributary.provisioning import ProvisionResult, template_digest


def test_template_digest_ignores_key_order() -> None:
    body = USER_EVENTS.indices["events"].template_body()
    reordered = dict(reversed(list(body.items())))
    assert template_digest(body) == template_digest(reordered)
    assert template_digest(body) != template_digest({**body, "priority": 1})


def test_result_lines_read_well() -> None:
    assert ProvisionResult("topic", "user_events", "unchanged").line() == "topic user_events: unchanged"
    assert (
        ProvisionResult("topic", "t", "updated", "retention.ms 1 -> 2").line()
        == "topic t: updated (retention.ms 1 -> 2)"
    )


def test_summary_says_nothing_changed_only_when_true() -> None:
    steps = [{"step": "migrations", "changed": False}, {"step": "topics", "changed": False}]
    assert summarize(steps) == "bootstrap: nothing changed"
    assert summarize([*steps, {"step": "index_templates", "changed": True}]) == "bootstrap: changed index_templates"


@pytest.mark.parametrize(
    ("url", "yoyo", "plain"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db", "postgresql://u@h:5432/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://u@h/db", "postgresql://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_postgres_urls_are_translated_per_driver(url: str, yoyo: str, plain: str) -> None:
    assert yoyo_url(url) == yoyo
    assert plain_pg_url(url) == plain


def test_non_postgres_url_is_refused_with_the_expected_form() -> None:
    with pytest.raises(ValueError, match="expected postgresql://"):
        yoyo_url("mysql://u@h/db")

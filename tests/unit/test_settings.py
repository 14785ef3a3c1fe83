from __future__ import annotations

from pathlib import Path

import pytest

from tributary.settings import REPO_ROOT, Settings, load_settings

ALL_VARS = [row[0] for row in Settings.from_env().describe()]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_suit_the_embedded_stack(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.state_dir == REPO_ROOT / ".state"
    assert s.kafka_bootstrap == "127.0.0.1:9092" and s.embedded_kafka
    assert s.es_url == "http://127.0.0.1:9200" and s.embedded_es and s.es_plain_json
    assert s.pg_endpoint.port == 5432 and s.pg_endpoint.is_loopback
    assert s.checkpoint_root == str(REPO_ROOT / ".state" / "checkpoints")
    assert s.airflow_url == "http://127.0.0.1:8080"


def test_real_elasticsearch_gets_its_own_media_types_by_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TRIBUTARY_EMBEDDED_ES", "0")
    clean_env.setenv("TRIBUTARY_ES_URL", "https://es.prod:9243/")
    s = load_settings()
    assert not s.es_plain_json
    assert s.es_url == "https://es.prod:9243"
    assert (s.es_endpoint.host, s.es_endpoint.port, s.es_endpoint.is_loopback) == ("es.prod", 9243, False)


def test_every_endpoint_comes_from_the_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("TRIBUTARY_STATE_DIR", str(tmp_path))
    clean_env.setenv("TRIBUTARY_KAFKA_BOOTSTRAP", "k1:9093,k2:9093")
    clean_env.setenv("TRIBUTARY_PG_URL", "postgresql://app:secret@db.internal/tributary")
    clean_env.setenv("TRIBUTARY_AIRFLOW_PORT", "18080")
    s = load_settings()
    assert s.kafka_endpoint.host == "k1" and s.kafka_endpoint.port == 9093
    assert s.pg_endpoint.host == "db.internal" and s.pg_endpoint.port == 5432
    assert s.airflow_port == 18080 and s.airflow_endpoint.setting == "TRIBUTARY_AIRFLOW_PORT"
    assert s.checkpoint_root == str(tmp_path / "checkpoints"), "paths follow the state dir"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TRIBUTARY_EMBEDDED_KAFKA", "maybe", "TRIBUTARY_EMBEDDED_KAFKA='maybe' is not a boolean"),
        ("TRIBUTARY_AIRFLOW_PORT", "80a", "TRIBUTARY_AIRFLOW_PORT='80a' is not an integer"),
    ],
)
def test_bad_values_name_the_variable(clean_env: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        load_settings()


def test_bad_bootstrap_names_the_setting(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TRIBUTARY_KAFKA_BOOTSTRAP", "localhost")
    with pytest.raises(ValueError, match="TRIBUTARY_KAFKA_BOOTSTRAP"):
        _ = load_settings().kafka_endpoint


def test_describe_lists_every_setting_and_masks_secrets(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TRIBUTARY_ES_PASSWORD", "hunter2")
    rows = load_settings().describe()
    assert all(env.startswith("TRIBUTARY_") and doc for env, _, doc in rows)
    assert ("TRIBUTARY_ES_PASSWORD", "***") in [(env, value) for env, value, _ in rows]

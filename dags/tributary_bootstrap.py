"""
### Tributary bootstrap

Brings the platform's shared state to what the pipeline catalog (`tributary/catalog.py`) declares:

1. **migrate_schema**: applies pending SQL migrations from `sql/migrations` (yoyo-migrations) to the
   database of the `tributary_postgres` connection;
2. **create_kafka_topics**: creates missing topics with their partitions and configs, aligns the
   configs of existing ones (`tributary_kafka` connection);
3. **put_index_templates**: puts the Elasticsearch index templates (`TRIBUTARY_ES_URL`).

Every step is idempotent: a second run changes nothing and the `report` task says
"bootstrap: nothing changed". Safe to trigger at any time, e.g. after deploying a catalog change.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from tributary.settings import KAFKA_CONN_ID, PG_CONN_ID


@dag(
    dag_id="tributary_bootstrap",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["tributary", "bootstrap"],
    doc_md=__doc__,
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": timedelta(seconds=10)},
)
def tributary_bootstrap() -> None:
    @task
    def migrate_schema() -> dict[str, Any]:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from tributary import bootstrap

        report = bootstrap.migrate(PostgresHook(postgres_conn_id=PG_CONN_ID).get_uri())
        report.log()
        return report.to_dict()

    @task
    def create_kafka_topics() -> dict[str, Any]:
        from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

        from tributary import bootstrap
        from tributary.settings import load_settings

        admin = KafkaAdminClientHook(kafka_config_id=KAFKA_CONN_ID).get_conn
        report = bootstrap.create_topics(admin, load_settings().kafka_replication_factor)
        report.log()
        return report.to_dict()

    @task
    def put_index_templates() -> dict[str, Any]:
        from tributary import bootstrap
        from tributary.clients import es_client
        from tributary.settings import load_settings

        report = bootstrap.put_index_templates(es_client(load_settings()))
        report.log()
        return report.to_dict()

    @task
    def report(steps: list[dict[str, Any]]) -> str:
        from tributary import bootstrap

        line = bootstrap.summarize(steps)
        print(line)
        return line

    migrations, topics, templates = migrate_schema(), create_kafka_topics(), put_index_templates()
    migrations >> topics >> templates
    report([migrations, topics, templates])  # type: ignore[list-item]  # XComArgs resolve at run time


tributary_bootstrap()

"""
### Tributary streaming control

Start, stop or restart one streaming job by hand. Trigger it with:

- **job**: a pipeline of the catalog (`tributary/catalog.py`);
- **action**: `start` (desired state *running*, submitted now if not up; also clears a *failed*
  job's restart count), `stop` (desired state *stopped*: the job stops its queries at a batch
  boundary, and is killed if it has not after its grace period) or `restart` (both).

The supervisor (`tributary_streaming_supervisor`) keeps the job in the desired state afterwards.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag

from tributary.catalog import PIPELINES
from tributary_airflow.operators import ACTIONS, StreamingJobControlOperator


@dag(
    dag_id="tributary_streaming_control",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["tributary", "streaming"],
    doc_md=__doc__,
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(seconds=10)},
    params={
        "job": Param(
            "user_events",
            type="string",
            enum=sorted(PIPELINES),
            title="Job",
            description="The streaming job (catalog pipeline) to act on.",
        ),
        "action": Param(
            "start",
            type="string",
            enum=list(ACTIONS),
            title="Action",
            description="start: run it and keep it running; stop: stop it cleanly; restart: stop, then start.",
        ),
    },
)
def tributary_streaming_control() -> None:
    StreamingJobControlOperator(task_id="control", job="{{ params.job }}", action="{{ params.action }}")


tributary_streaming_control()

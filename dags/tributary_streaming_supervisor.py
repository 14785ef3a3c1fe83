"""
### Tributary streaming supervisor

Every minute, one pass over the streaming jobs of the catalog (`tributary/catalog.py`):

- a job whose **desired state** is *running* and whose driver is gone is started again: at once
  the first time, then with exponential backoff (catalog `Health`: 30 s doubling up to 10 min,
  reset after 15 healthy minutes);
- a running job whose **last heartbeat** is older than the catalog limit, or whose **consumer lag**
  keeps growing past the limit, is killed and restarted the same way;
- a job whose desired state is *stopped* is asked to stop and killed after its grace period.

After `max_restarts` failures in a row a job is marked **failed** and this DAG run fails with the
job's last error. Fix the cause, then trigger `tributary_streaming_control` (action `start`).
Every action is logged in the `streaming_job_actions` table and shown on the *Streaming jobs* page.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag

from tributary_airflow.operators import SuperviseStreamingJobsOperator


@dag(
    dag_id="tributary_streaming_supervisor",
    schedule=timedelta(minutes=1),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=5),
    tags=["tributary", "streaming"],
    doc_md=__doc__,
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(seconds=10)},
)
def tributary_streaming_supervisor() -> None:
    SuperviseStreamingJobsOperator(task_id="supervise", execution_timeout=timedelta(minutes=4))


tributary_streaming_supervisor()

"""The streaming DAGs' contracts: the control DAG's typed params, the supervisor's schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tributary.catalog import PIPELINES
from tributary.settings import REPO_ROOT


def _dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / f"{dag_id}.py"), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def test_control_params_are_enums_of_the_catalog_and_the_actions() -> None:
    params = _dag("tributary_streaming_control").params
    assert params.get_param("job").schema["enum"] == sorted(PIPELINES)
    assert params.get_param("action").schema["enum"] == ["start", "stop", "restart"]
    assert params.validate() == {"job": "user_events", "action": "start"}


@pytest.mark.parametrize(("key", "value"), [("job", "nope"), ("action", "explode"), ("job", 3)])
def test_control_refuses_unknown_values_before_anything_runs(key: str, value: Any) -> None:
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(_dag("tributary_streaming_control").params)
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {key}"):
        params[key] = value  # validated on assignment, as the trigger form and the REST API do


def test_supervisor_runs_every_minute_one_at_a_time() -> None:
    dag = _dag("tributary_streaming_supervisor")
    assert dag.schedule == timedelta(minutes=1)
    assert dag.max_active_runs == 1 and not dag.catchup

"""Every DAG file imports cleanly and is self-explaining in the UI: tags, owner, retries, docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tributary.settings import REPO_ROOT

DAG_FILES = sorted((REPO_ROOT / "dags").glob("*.py"))


def _dags_in(path: Path):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    assert bag.dags, f"{path.name} defines no DAG"
    return bag.dags.values()


def test_there_are_dag_files() -> None:
    assert DAG_FILES


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_is_well_formed(path: Path) -> None:
    for dag in _dags_in(path):
        assert dag.tags and "tributary" in dag.tags, f"{dag.dag_id}: tag it 'tributary'"
        assert dag.doc_md and len(dag.doc_md.strip()) > 80, f"{dag.dag_id}: document its purpose in doc_md"
        assert dag.dag_id == path.stem, f"{dag.dag_id}: name the file after the DAG id"
        for task in dag.tasks:
            assert task.owner not in {"", "airflow"}, f"{dag.dag_id}.{task.task_id}: set an owner"
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id}: set retries"

from __future__ import annotations

import os
import tempfile

# Parsing DAGs loads Airflow's config; keep it away from ~/airflow and any running stack.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tributary-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

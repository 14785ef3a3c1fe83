"""The embedded platform stack behind `tributary up|down|status`, and its building blocks.

Modules: `processes` (PID files, detached processes), `ports`, `health` (probes and waiting),
`component` (the common interface), `postgres`, `broker` (Apache Kafka, KRaft), `kafka_install` (its jars), `search` (osmem), `airflow`,
`lifecycle` (the whole stack in order), `report` (tables).
"""

from tributary.stack.component import ComponentStatus, State
from tributary.stack.errors import StackError
from tributary.stack.lifecycle import down, status, up

__all__ = ["ComponentStatus", "StackError", "State", "down", "status", "up"]

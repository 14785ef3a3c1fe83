"""pyspark and pyspark-client install into the same folder: their versions must be one."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pyspark


def test_pyspark_python_side_matches_the_spark_jars() -> None:
    jars = Path(pyspark.__file__).parent / "jars"
    core = [p.name for p in jars.glob("spark-core_*.jar")]
    assert len(core) == 1, f"expected one spark-core jar in {jars}, found {core}"
    match = re.fullmatch(r"spark-core_[\d.]+-(.+)\.jar", core[0])
    assert match is not None
    assert pyspark.__version__ == match.group(1), (
        f"pyspark's Python files are {pyspark.__version__} but the jars are {match.group(1)}: "
        "pyspark-client probably overwrote them; pin pyspark and pyspark-client to one version"
    )


def test_pyspark_and_pyspark_client_are_pinned_together() -> None:
    assert version("pyspark") == version("pyspark-client") == pyspark.__version__

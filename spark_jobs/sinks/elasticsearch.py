"""Elasticsearch sink: bulk `create` with deterministic ids, so a replayed batch is a no-op.

The NDJSON body is built in Spark (one string per document: action line + source line); the driver
only slices the Arrow column into requests and reads the per-item results. A 409 means the
document is already there (a replay): counted, not an error. Any other item error fails the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
from elasticsearch import Elasticsearch
from elasticsearch import TransportError as EsTransportError
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_jobs.sinks.copy_lines import copy_payload
from spark_jobs.sinks.postgres import SinkError
from tributary.catalog import Index

log = logging.getLogger(__name__)

BULK = "_bulk"


def bulk_line(index: Index, doc_id: Column, day_of: Column, fields: Sequence[str | Column]) -> Column:
    """The NDJSON `create` action + document of a row, into the daily index of `day_of`."""
    target = F.concat(F.lit(f"{index.base}-"), F.date_format(day_of, "yyyy.MM.dd"))
    action = F.to_json(F.struct(F.struct(target.alias("_index"), doc_id.alias("_id")).alias("create")))
    source = F.to_json(F.struct(*fields))
    return F.concat(action, F.lit("\n"), source, F.lit("\n"))


def bulk_lines(
    df: DataFrame, index: Index, doc_id: Column, day_of: Column, fields: Sequence[str | Column]
) -> DataFrame:
    """`bulk_line` for every row of `df`, in the column `BULK`."""
    return df.select(bulk_line(index, doc_id, day_of, fields).alias(BULK))


@dataclass
class BulkResult:
    created: int = 0
    already_present: int = 0

    def add(self, other: BulkResult) -> None:
        self.created += other.created
        self.already_present += other.already_present


class ElasticsearchSink:
    """Sends bulk bodies in requests of at most `docs_per_request` documents."""

    def __init__(self, es: Elasticsearch, *, docs_per_request: int = 5_000) -> None:
        self._es = es
        self._docs_per_request = docs_per_request

    def write(self, label: str, lines: pa.ChunkedArray) -> BulkResult:
        total = BulkResult()
        for start in range(0, len(lines), self._docs_per_request):
            chunk = lines.slice(start, self._docs_per_request)
            body = b"".join(bytes(part) for part in copy_payload(chunk))
            total.add(self._send(label, body))
        return total

    def _send(self, label: str, body: bytes) -> BulkResult:
        try:
            # The client forwards a pre-built NDJSON body as is (its stubs only know lists).
            response = self._es.bulk(operations=body)  # type: ignore[arg-type]
        except EsTransportError as exc:
            raise SinkError(f"{label}: Elasticsearch bulk request failed: {exc}; check TRIBUTARY_ES_URL") from exc
        result = BulkResult()
        failures = []
        for item in response["items"]:
            outcome = item.get("create") or next(iter(item.values()))
            status = outcome.get("status", 0)
            if status in (200, 201):
                result.created += 1
            elif status == 409:
                result.already_present += 1
            else:
                failures.append(f"{outcome.get('_index')}/{outcome.get('_id')}: {status} {outcome.get('error')}")
        if failures:
            raise SinkError(
                f"{label}: Elasticsearch refused {len(failures)} document(s), e.g. {failures[:3]}; "
                "check the index template (tributary provision) and the mapping of these fields"
            )
        return result

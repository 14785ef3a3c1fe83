"""Turn DataFrame rows into PostgreSQL `COPY ... (FORMAT csv)` lines inside Spark.

Formatting happens in the JVM, in parallel, and the driver receives one Arrow string column whose
value buffer already *is* the COPY payload: no per-row Python work on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, DataType, MapType, StructType

LINE = "_copy_line"

# Postgres CSV: quotes doubled inside quoted fields, unquoted empty field = NULL, "" = empty string
# (Spark's defaults for nullValue/emptyValue on write match that). Spark trims white space on
# write by default, which would silently change data.
_CSV_OPTIONS = {
    "escape": '"',
    "quote": '"',
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
    "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX",
}


def _as_copy_text(column: Column, data_type: DataType) -> Column:
    if isinstance(data_type, BinaryType):
        return F.concat(F.lit("\\x"), F.lower(F.hex(column)))  # bytea hex input format
    if isinstance(data_type, ArrayType):
        # Only arrays of plain identifiers (rule names) are stored; a Postgres array literal.
        return F.concat(F.lit("{"), F.array_join(column, ","), F.lit("}"))
    if isinstance(data_type, MapType | StructType):
        return F.to_json(column)  # jsonb
    return column


def csv_line(*fields: Column) -> Column:
    """The CSV line (with its newline) of columns that are already text, numbers or timestamps."""
    named = [field.alias(f"c{i}") for i, field in enumerate(fields)]
    return F.concat(F.to_csv(F.struct(*named), _CSV_OPTIONS), F.lit("\n"))


def copy_line(schema: StructType, columns: Sequence[str]) -> Column:
    """The CSV line (with its newline) of `columns`, for a DataFrame of `schema`."""
    types = {f.name: f.dataType for f in schema.fields}
    missing = [c for c in columns if c not in types]
    if missing:
        raise ValueError(f"copy_line: columns {missing} are not in the DataFrame ({sorted(types)})")
    return csv_line(*(_as_copy_text(F.col(c), types[c]) for c in columns))


def copy_lines(df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """One CSV line per row of `df[columns]`, in the column `LINE`."""
    return df.select(copy_line(df.schema, columns).alias(LINE))


def copy_payload(lines: pa.ChunkedArray | pa.Array) -> Iterator[memoryview]:
    """The bytes of an Arrow column of COPY lines, chunk by chunk, without copying them."""
    chunks = lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise ValueError("copy_payload: a COPY line is null; copy_lines never produces one")
        if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
            raise TypeError(f"copy_payload: expected a string column, got {chunk.type}")
        _, offsets_buffer, data = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if pa.types.is_large_string(chunk.type) else np.int32)
        start, end = int(offsets[chunk.offset]), int(offsets[chunk.offset + len(chunk)])
        yield memoryview(data)[start:end]

#!/usr/bin/env python3
"""A large table of small files for the scale run of
`cargo bench --bench iceberg_compact` (ICEBERG_BENCH_SCALE=FILES).

  make_scale.py WAREHOUSE TABLE FILES ROWS_PER_FILE PARTITIONS
      -> JSON {files, rows, bytes, checksum}
  make_scale.py check WAREHOUSE TABLE
      -> JSON {files, rows, bytes, checksum, operation}

Makes `db.TABLE` (format v2, identity-partitioned by `category`) in the
SQL catalog of tests/iceberg/pyice.py (SQLite at WAREHOUSE/catalog.db)
and appends FILES data files of ROWS_PER_FILE rows, FILES/PARTITIONS per
partition, written by pyiceberg itself (field ids, its default zstd) in
appends of about 256 MiB, so the table is made in minutes, not hours.
The data does not compress to nothing: `value` is uniform random doubles
and `payload` 16 random bytes per row; `id` counts up. 16,000 rows make a
file of about 512 KiB.

On S3 (the S3 scale run, ICEBERG_BENCH_SCALE_S3=1): with env
PYICE_WAREHOUSE=s3://lake/wh and PYICE_S3_ENDPOINT, PYICE_S3_KEY_ID,
PYICE_S3_SECRET, pyice.py's catalog() keeps the SQLite catalog at
WAREHOUSE/catalog.db on local disk and puts the table's files (data,
manifests, metadata) in the bucket, through s3fs.

The checksum is the sum of `id` and the row count: with ids 0..rows-1
unique, equal sums and counts mean no row was lost or doubled (the bench
reads it back through pyiceberg after compacting).
"""
import json
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import BinaryType, DoubleType, LongType, NestedField, StringType

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "iceberg"))
from pyice import catalog  # noqa: E402

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=False),
    NestedField(2, "category", StringType(), required=False),
    NestedField(3, "value", DoubleType(), required=False),
    NestedField(4, "payload", BinaryType(), required=False),
)


def chunk(start, rows, category):
    payload = pa.Array.from_buffers(
        pa.binary(16), rows, [None, pa.py_buffer(os.urandom(rows * 16))]
    ).cast(pa.large_binary())
    return pa.table(
        {
            "id": pa.array(range(start, start + rows), pa.int64()),
            "category": pa.array([category] * rows, pa.large_string()),
            "value": pc.random(rows),
            "payload": payload,
        }
    )


def summary(table):
    table.refresh()
    df = table.inspect.files()
    ids = table.scan(selected_fields=("id",)).to_arrow()["id"]
    rows = len(ids)
    return {
        "files": df.num_rows,
        "rows": rows,
        "bytes": sum(df["file_size_in_bytes"].to_pylist()),
        "checksum": f"{pc.sum(ids).as_py() or 0}:{rows}",
        "operation": table.current_snapshot().summary.operation.value,
    }


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        print(json.dumps(summary(catalog(sys.argv[2]).load_table(f"db.{sys.argv[3]}"))))
        return
    if len(sys.argv) != 6:
        sys.exit("usage: make_scale.py WAREHOUSE TABLE FILES ROWS_PER_FILE PARTITIONS")
    warehouse, name = sys.argv[1], sys.argv[2]
    files, rows_per_file, parts = (int(a) for a in sys.argv[3:6])
    cat = catalog(warehouse)
    try:
        cat.create_namespace("db")
    except Exception:  # noqa: BLE001 (exists)
        pass
    spec = PartitionSpec(
        PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="category")
    )
    table = cat.create_table(f"db.{name}", schema=SCHEMA, partition_spec=spec)
    # One file per append per partition: pyiceberg would split a larger
    # table by its in-memory size, not the file size we want.
    per_append = max(1, (256 << 20) // (rows_per_file * 30))
    next_id = 0
    made = 0
    per_part = files // parts
    while made < per_part:
        n = min(per_append, per_part - made)
        with table.transaction() as tx:
            with tx.update_snapshot().fast_append() as snap:
                for p in range(parts):
                    for _ in range(n):
                        t = chunk(next_id, rows_per_file, f"p{p:02d}")
                        next_id += rows_per_file
                        for df in _dataframe_to_data_files(
                            table_metadata=tx.table_metadata, df=t, io=table.io
                        ):
                            snap.append_data_file(df)
        made += n
        table = cat.load_table(f"db.{name}")
    table = cat.load_table(f"db.{name}")
    df = table.inspect.files()
    print(
        json.dumps(
            {
                "files": df.num_rows,
                "rows": next_id,
                "bytes": sum(df["file_size_in_bytes"].to_pylist()),
                "checksum": f"{next_id * (next_id - 1) // 2}:{next_id}",
            }
        )
    )


if __name__ == "__main__":
    main()

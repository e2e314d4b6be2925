#!/usr/bin/env python3
"""Iceberg test tables, made and read by an independent implementation
(pyiceberg, SQL catalog on SQLite, local warehouse).

  pyice.py make    WAREHOUSE TABLE APPENDS ROWS   -> JSON summary
  pyice.py inspect WAREHOUSE TABLE               -> JSON summary
  pyice.py append  WAREHOUSE TABLE ROWS           -> JSON summary

The summary: data files (total and per partition), rows, an order-free
checksum of every row, and the current snapshot's summary operation.
"""
import hashlib
import json
import os
import sys

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import DoubleType, LongType, NestedField, StringType

CATEGORIES = ["alpha", "beta", "gamma", "delta"]


def catalog(warehouse):
    os.makedirs(warehouse, exist_ok=True)
    return SqlCatalog(
        "lake",
        uri=f"sqlite:///{warehouse}/catalog.db",
        warehouse=f"file://{warehouse}",
    )


def batch(start, rows):
    ids = list(range(start, start + rows))
    return pa.table(
        {
            "id": pa.array(ids, type=pa.int64()),
            "category": pa.array([CATEGORIES[i % len(CATEGORIES)] for i in ids], type=pa.string()),
            "value": pa.array([i * 0.5 for i in ids], type=pa.float64()),
        }
    )


def summary(table):
    table.refresh()
    arrow = table.scan().to_arrow()
    digest = 0
    for r in arrow.to_pylist():
        h = hashlib.sha256(json.dumps(r, sort_keys=True).encode()).digest()
        digest ^= int.from_bytes(h[:8], "little")
    files = list(table.inspect.files().to_pylist())
    per = {}
    for f in files:
        key = json.dumps(f.get("partition"), sort_keys=True, default=str)
        per[key] = per.get(key, 0) + 1
    snap = table.current_snapshot()
    return {
        "files": len(files),
        "per_partition": per,
        "rows": arrow.num_rows,
        "checksum": f"{digest:016x}",
        "operation": snap.summary.operation.value if snap else None,
        "snapshots": len(table.metadata.snapshots),
        "metadata": table.metadata_location,
    }


def main():
    cmd, warehouse, name = sys.argv[1], sys.argv[2], sys.argv[3]
    cat = catalog(warehouse)
    if cmd == "make":
        appends, rows = int(sys.argv[4]), int(sys.argv[5])
        try:
            cat.create_namespace("db")
        except Exception:
            pass
        schema = Schema(
            NestedField(1, "id", LongType(), required=False),
            NestedField(2, "category", StringType(), required=False),
            NestedField(3, "value", DoubleType(), required=False),
        )
        spec = PartitionSpec(PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="category"))
        table = cat.create_table(f"db.{name}", schema=schema, partition_spec=spec)
        for a in range(appends):
            table.append(batch(a * rows, rows))
        print(json.dumps(summary(table)))
    elif cmd == "inspect":
        print(json.dumps(summary(cat.load_table(f"db.{name}"))))
    elif cmd == "append":
        rows = int(sys.argv[4])
        table = cat.load_table(f"db.{name}")
        table.append(batch(10_000_000, rows))
        print(json.dumps(summary(table)))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Iceberg test tables, made and read by an independent implementation
(pyiceberg, SQL catalog on SQLite, local warehouse).

  pyice.py make    WAREHOUSE TABLE APPENDS ROWS   -> JSON summary
  pyice.py make-v1 WAREHOUSE TABLE APPENDS ROWS   -> same, format-version 1
  pyice.py inspect WAREHOUSE TABLE               -> JSON summary
  pyice.py make-sorted  ...                      -> same, sort order id DESC
  pyice.py make-evolved ...                      -> same; column `note` added
                                                    halfway (files of two schemas)
  pyice.py make-respec WAREHOUSE TABLE BEFORE AFTER ROWS -> unpartitioned for BEFORE appends,
                                                    then by identity(category) for AFTER more
  pyice.py make-types WAREHOUSE TABLE APPENDS ROWS -> same; columns of many types,
                                                    partitioned by identity, bucket,
                                                    truncate, day and hour transforms
  pyice.py append  WAREHOUSE TABLE ROWS [START]   -> JSON summary (ids from START)
  pyice.py append-raw ...                        -> same append, prints only the snapshot id
                                                    (no scan: for tables pyiceberg cannot read)
  pyice.py delete  WAREHOUSE TABLE CATEGORY ID    -> JSON summary
  pyice.py ids     WAREHOUSE TABLE               -> every row's id, sorted (deletes applied)
  pyice.py scan-all WAREHOUSE TABLE              -> {snapshot id: rows} for every
                                                    snapshot (reads each one's files)
  pyice.py repoint WAREHOUSE TABLE LOCATION      -> points the SQLite catalog's row at
                                                    LOCATION (the same file, respelled)
  pyice.py s3-mkbucket BUCKET | s3-ls BUCKET/PREFIX | s3-put BUCKET/KEY TEXT
  pyice.py iam-keys USER | s3-get-status BUCKET/KEY   (moto IAM keys; a GET's status)
           | s3-mv BUCKET/KEY BUCKET/KEY
                                                 -> the S3 server through s3fs

The catalog is SQLite at WAREHOUSE/catalog.db unless env PYICE_CATALOG_URI
gives another SQLAlchemy URI (e.g. postgresql+psycopg2://user@127.0.0.1:5432/db);
the warehouse is file://WAREHOUSE unless env PYICE_WAREHOUSE gives another
(s3://bucket/wh, with PYICE_S3_ENDPOINT, PYICE_S3_KEY_ID and PYICE_S3_SECRET
naming the S3 API server and its keys: files go through s3fs).

`delete` removes the rows with category == CATEGORY and id == ID. pyiceberg
(0.12) only deletes copy-on-write: whole data files that match are dropped
(a "delete" snapshot) and partly matching files are rewritten (an "overwrite"
snapshot); it writes no positional or equality delete files, even with
write.delete.mode=merge-on-read (it warns and falls back).

The summary: data files (total and per partition), rows, an order-free
checksum of every row, and the current snapshot's summary operation.
"""
import hashlib
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError
from pyiceberg.expressions import And, EqualTo
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, SortDirection, SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import DoubleType, LongType, NestedField, StringType

CATEGORIES = ["alpha", "beta", "gamma", "delta"]


def catalog(warehouse):
    os.makedirs(warehouse, exist_ok=True)
    props = {}
    endpoint = os.environ.get("PYICE_S3_ENDPOINT")
    if endpoint:
        # Through s3fs: moto's server answers pyarrow's multipart upload
        # completion wrongly.
        props = {
            "py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO",
            "s3.endpoint": endpoint,
            "s3.access-key-id": os.environ["PYICE_S3_KEY_ID"],
            "s3.secret-access-key": os.environ["PYICE_S3_SECRET"],
            "s3.region": "us-east-1",
            "s3.force-virtual-addressing": "false",
        }
    return SqlCatalog(
        "lake",
        uri=os.environ.get("PYICE_CATALOG_URI") or f"sqlite:///{warehouse}/catalog.db",
        warehouse=os.environ.get("PYICE_WAREHOUSE") or f"file://{warehouse}",
        **props,
    )


def parquet(table, path):
    """A data file's Parquet reader, through the table's own FileIO (local
    or S3)."""
    return pq.ParquetFile(table.io.new_input(path).open())


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
        h = hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).digest()
        digest ^= int.from_bytes(h[:8], "little")
    # Data files only (content 0); delete files are counted apart.
    every = list(table.inspect.files().to_pylist())
    files = [f for f in every if f["content"] == 0]
    per = {}
    for f in files:
        key = json.dumps(f.get("partition"), sort_keys=True, default=str)
        per[key] = per.get(key, 0) + 1
    snap = table.current_snapshot()
    sorted_desc = True
    codecs = set()
    for f in files:
        pf = parquet(table, f["file_path"])
        meta = pf.metadata
        if meta.num_row_groups:
            codecs.add(meta.row_group(0).column(0).compression)
        ids = pf.read(columns=["id"]).column("id").to_pylist()
        if any(a is not None and b is not None and a < b for a, b in zip(ids, ids[1:])):
            sorted_desc = False
    return {
        "schema": str(table.schema()),
        "spec": str(table.spec()),
        "sort_order": str(table.sort_order()),
        "format_version": table.format_version,
        "files_sorted_desc_by_id": sorted_desc,
        "codecs": sorted(codecs),
        "files": len(files),
        "delete_files": len(every) - len(files),
        "delete_file_paths": sorted(f["file_path"] for f in every if f["content"] != 0),
        "per_partition": per,
        "rows": arrow.num_rows,
        "checksum": f"{digest:016x}",
        "operation": snap.summary.operation.value if snap else None,
        "snapshot_summary": dict(snap.summary.additional_properties) if snap else {},
        "snapshots": len(table.metadata.snapshots),
        "metadata": table.metadata_location,
    }


def ensure_namespace(cat):
    try:
        cat.create_namespace("db")
    except NamespaceAlreadyExistsError:
        pass  # a second table in the same warehouse


def make_types(cat, name, appends, rows):
    """A table partitioned on int (with nulls), bool, float, double, date,
    timestamp and string columns by identity, bucket, truncate, day and hour
    transforms, so its manifests carry partition values of every common type."""
    import datetime

    from pyiceberg.transforms import BucketTransform, DayTransform, HourTransform, TruncateTransform
    from pyiceberg.types import BooleanType, DateType, FloatType, IntegerType, TimestampType, TimestamptzType

    ensure_namespace(cat)
    schema = Schema(
        NestedField(1, "id", LongType(), required=False),
        NestedField(2, "n", IntegerType(), required=False),
        NestedField(3, "flag", BooleanType(), required=False),
        NestedField(4, "f", FloatType(), required=False),
        NestedField(5, "d", DoubleType(), required=False),
        NestedField(6, "day", DateType(), required=False),
        NestedField(7, "ts", TimestampType(), required=False),
        NestedField(8, "tstz", TimestamptzType(), required=False),
        NestedField(9, "s", StringType(), required=False),
    )
    spec = PartitionSpec(
        PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="n"),
        PartitionField(source_id=3, field_id=1001, transform=IdentityTransform(), name="flag"),
        PartitionField(source_id=4, field_id=1002, transform=IdentityTransform(), name="f"),
        PartitionField(source_id=5, field_id=1003, transform=IdentityTransform(), name="d"),
        PartitionField(source_id=6, field_id=1004, transform=IdentityTransform(), name="day"),
        PartitionField(source_id=7, field_id=1005, transform=DayTransform(), name="ts_day"),
        PartitionField(source_id=8, field_id=1006, transform=HourTransform(), name="tstz_hour"),
        PartitionField(source_id=9, field_id=1007, transform=TruncateTransform(2), name="s_trunc"),
        PartitionField(source_id=1, field_id=1008, transform=BucketTransform(2), name="id_bucket"),
    )
    table = cat.create_table(f"db.{name}", schema=schema, partition_spec=spec)
    base = datetime.datetime(2026, 11, 25, 10, 30)
    for a in range(appends):
        ids = list(range(a * rows, a * rows + rows))
        table.append(
            pa.table(
                {
                    "id": pa.array(ids, type=pa.int64()),
                    "n": pa.array([None if i % 2 else 7 for i in ids], type=pa.int32()),
                    "flag": pa.array([True] * rows, type=pa.bool_()),
                    "f": pa.array([1.5] * rows, type=pa.float32()),
                    "d": pa.array([2.25] * rows, type=pa.float64()),
                    "day": pa.array([base.date()] * rows, type=pa.date32()),
                    "ts": pa.array([base + datetime.timedelta(seconds=i) for i in ids], type=pa.timestamp("us")),
                    "tstz": pa.array(
                        [base.replace(tzinfo=datetime.timezone.utc)] * rows, type=pa.timestamp("us", tz="UTC")
                    ),
                    "s": pa.array([f"s{i % 3}x" for i in ids], type=pa.string()),
                }
            )
        )
    print(json.dumps(summary(table)))


def s3fs_client():
    import s3fs

    return s3fs.S3FileSystem(
        endpoint_url=os.environ["PYICE_S3_ENDPOINT"],
        key=os.environ["PYICE_S3_KEY_ID"],
        secret=os.environ["PYICE_S3_SECRET"],
        client_kwargs={"region_name": "us-east-1"},
    )


def s3_command(cmd, arg, rest):
    """s3-mkbucket BUCKET, s3-ls BUCKET/PREFIX (every key under it, with
    sizes), s3-put BUCKET/KEY TEXT, s3-mv FROM TO: the S3 server seen
    through s3fs."""
    fs = s3fs_client()
    if cmd == "s3-mkbucket":
        fs.call_s3("create_bucket", Bucket=arg)
        print(json.dumps({"bucket": arg}))
    elif cmd == "s3-ls":
        fs.invalidate_cache()
        print(json.dumps({k: v["size"] for k, v in fs.find(arg, detail=True).items()}))
    elif cmd == "s3-put":
        with fs.open(arg, "wb") as f:
            f.write(rest[0].encode())
        print(json.dumps({"put": arg}))
    elif cmd == "s3-mv":
        fs.mv(arg, rest[0])
        print(json.dumps({"moved": arg, "to": rest[0]}))


def iam_keys(user):
    """Creates IAM user USER with an access key allowed s3:* on the moto
    server at PYICE_S3_ENDPOINT and prints {"id", "secret"}."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=os.environ["PYICE_S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="lake", PolicyDocument=json.dumps(policy))
    print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))


def s3_get_status(key):
    """GETs BUCKET/KEY with boto3 and the PYICE_S3_* keys; prints
    {"status": HTTP status} (403 for a refused signature)."""
    import boto3
    import botocore.exceptions

    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["PYICE_S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=os.environ["PYICE_S3_KEY_ID"],
        aws_secret_access_key=os.environ["PYICE_S3_SECRET"],
    )
    bucket, _, k = key.partition("/")
    try:
        s3.get_object(Bucket=bucket, Key=k)
        print(json.dumps({"status": 200}))
    except botocore.exceptions.ClientError as e:
        print(json.dumps({"status": e.response["ResponseMetadata"]["HTTPStatusCode"]}))


def main():
    if sys.argv[1] == "iam-keys":
        return iam_keys(sys.argv[2])
    if sys.argv[1] == "s3-get-status":
        return s3_get_status(sys.argv[2])
    if sys.argv[1].startswith("s3-"):
        return s3_command(sys.argv[1], sys.argv[2], sys.argv[3:])
    cmd, warehouse, name = sys.argv[1], sys.argv[2], sys.argv[3]
    cat = catalog(warehouse)
    if cmd in ("make", "make-v1", "make-sorted", "make-evolved"):
        appends, rows = int(sys.argv[4]), int(sys.argv[5])
        ensure_namespace(cat)
        schema = Schema(
            NestedField(1, "id", LongType(), required=False),
            NestedField(2, "category", StringType(), required=False),
            NestedField(3, "value", DoubleType(), required=False),
        )
        spec = PartitionSpec(PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="category"))
        props = {"format-version": "1"} if cmd == "make-v1" else {}
        order = UNSORTED_SORT_ORDER
        if cmd == "make-sorted":
            order = SortOrder(SortField(source_id=1, transform=IdentityTransform(), direction=SortDirection.DESC))
        table = cat.create_table(f"db.{name}", schema=schema, partition_spec=spec, properties=props, sort_order=order)
        for a in range(appends):
            if cmd == "make-evolved" and a == appends // 2:
                with table.update_schema() as u:
                    u.add_column("note", StringType())
            b = batch(a * rows, rows)
            if cmd == "make-evolved" and a >= appends // 2:
                b = b.append_column("note", pa.array([f"n{i}" for i in range(a * rows, a * rows + rows)], type=pa.string()))
            table.append(b)
        print(json.dumps(summary(table)))
    elif cmd == "make-respec":
        before, after, rows = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        ensure_namespace(cat)
        schema = Schema(
            NestedField(1, "id", LongType(), required=False),
            NestedField(2, "category", StringType(), required=False),
            NestedField(3, "value", DoubleType(), required=False),
        )
        table = cat.create_table(f"db.{name}", schema=schema)
        for a in range(before + after):
            if a == before:
                with table.update_spec() as u:
                    u.add_identity("category")
            table.append(batch(a * rows, rows))
        print(json.dumps(summary(table)))
    elif cmd == "make-types":
        make_types(cat, name, int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "inspect":
        print(json.dumps(summary(cat.load_table(f"db.{name}"))))
    elif cmd in ("append", "append-raw"):
        rows = int(sys.argv[4])
        start = int(sys.argv[5]) if len(sys.argv) > 5 else 10_000_000
        table = cat.load_table(f"db.{name}")
        table.append(batch(start, rows))
        if cmd == "append":
            print(json.dumps(summary(table)))
        else:
            print(json.dumps({"snapshot_id": table.current_snapshot().snapshot_id}))
    elif cmd == "delete":
        category, ident = sys.argv[4], int(sys.argv[5])
        table = cat.load_table(f"db.{name}")
        table.delete(And(EqualTo("category", category), EqualTo("id", ident)))
        print(json.dumps(summary(table)))
    elif cmd == "ids":
        table = cat.load_table(f"db.{name}")
        print(json.dumps(sorted(table.scan().to_arrow().column("id").to_pylist())))
    elif cmd == "scan-all":
        table = cat.load_table(f"db.{name}")
        print(json.dumps({str(s.snapshot_id): table.scan(snapshot_id=s.snapshot_id).to_arrow().num_rows
                          for s in table.metadata.snapshots}))
    elif cmd == "repoint":
        import sqlite3

        with sqlite3.connect(f"{warehouse}/catalog.db") as db:
            n = db.execute(
                "UPDATE iceberg_tables SET metadata_location = ? WHERE table_namespace = 'db' AND table_name = ?",
                (sys.argv[4], name),
            ).rowcount
        print(json.dumps({"updated": n}))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

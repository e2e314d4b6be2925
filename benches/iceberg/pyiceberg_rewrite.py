#!/usr/bin/env python3
"""pyiceberg's own whole-table rewrite, timed: the baseline for
`cargo bench --bench iceberg_compact`.

  pyiceberg_rewrite.py WAREHOUSE TABLE   -> JSON {seconds, rows, files_before, files_after}

The table `db.TABLE` is loaded from the SQL catalog on SQLite at
WAREHOUSE/catalog.db (PYICE_CATALOG_URI overrides it, as in
tests/iceberg/pyice.py), then `table.scan().to_arrow()` followed by
`table.overwrite(arrow)` is timed with time.perf_counter: pyiceberg reads
every row and writes them back as new files in one `overwrite` snapshot,
which is how a pyiceberg user compacts a table (0.12 has no rewrite action).
Loading the catalog and the table is not timed; counting files is not timed.
"""
import json
import os
import sys
import time

# The catalog settings of the test tables: tests/iceberg/pyice.py's own.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "iceberg"))
from pyice import catalog  # noqa: E402


def data_files(table):
    table.refresh()
    return len(table.inspect.files())


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: pyiceberg_rewrite.py WAREHOUSE TABLE")
    warehouse, name = sys.argv[1], sys.argv[2]
    table = catalog(warehouse).load_table(f"db.{name}")
    files_before = data_files(table)
    start = time.perf_counter()
    arrow = table.scan().to_arrow()
    table.overwrite(arrow)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": arrow.num_rows,
                "files_before": files_before,
                "files_after": data_files(table),
            }
        )
    )


if __name__ == "__main__":
    main()

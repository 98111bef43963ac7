"""Print every row of a Delta table, read with Python `deltalake`, as a JSON list of objects.

Binary values are decoded as UTF-8 with replacement; dates and timestamps are printed with str().
usage: delivery_rows.py <table_dir>
"""

import json
import os
import sys

from deltalake import DeltaTable


def plain(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


rows = DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist()
print(json.dumps([{k: plain(v) for k, v in r.items()} for r in rows]), flush=True)
# deltalake's native threads sometimes abort at interpreter shutdown ("terminate called without an active
# exception") after the work is done; leave without running the shutdown.
os._exit(0)

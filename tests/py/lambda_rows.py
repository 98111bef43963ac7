"""Print chosen columns of every row of a Delta table, read by delta-rs's Python package (`deltalake`), as JSON:
`{"version": <table version>, "rows": [{column: value, ...}, ...]}` with the rows sorted.

usage: lambda_rows.py <table_dir_or_url> <column,column,...> [--options <json object-store options>]
"""

import json
import os
import sys


def main():
    args = sys.argv[1:]
    options = None
    if "--options" in args:
        i = args.index("--options")
        options = json.loads(args[i + 1])
        del args[i : i + 2]
    path, columns = args[0], args[1].split(",")
    from deltalake import DeltaTable

    table = DeltaTable(path, storage_options=options)
    rows = table.to_pyarrow_table(columns=columns).to_pylist()
    rows.sort(key=lambda r: json.dumps(r, sort_keys=True, default=str))
    print(json.dumps({"version": table.version(), "rows": rows}, default=str), flush=True)
    # deltalake's native threads sometimes abort at interpreter shutdown after the work is done: skip the shutdown.
    os._exit(0)


if __name__ == "__main__":
    main()

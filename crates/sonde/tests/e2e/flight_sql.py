"""Queries Sonde over Arrow Flight SQL with the ADBC driver (a real client) and
prints what it got as JSON, for tests/e2e/flight.rs to compare with the HTTP API.

usage: flight_sql.py GRPC_ADDR TOKEN SQL
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql

addr, token, sql = sys.argv[1], sys.argv[2], sys.argv[3]
conn = flight_sql.connect(
    f"grpc://{addr}",
    db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {token}"},
)
info = conn.adbc_get_info()
objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
tables = sorted(
    t["table_name"]
    for c in objects
    for s in (c["catalog_db_schemas"] or [])
    for t in (s["db_schema_tables"] or [])
)
cur = conn.cursor()
cur.execute(sql)
rows = cur.fetch_arrow_table().to_pylist()
error = None
try:
    cur.execute("DROP TABLE llm_calls")
except Exception as e:  # the driver raises a ProgrammingError for InvalidArgument
    error = str(e)
cur.close()
conn.close()
print(
    json.dumps(
        {
            "vendor": info.get("vendor_name"),
            "tables": tables,
            "rows": rows,
            "drop_error": error,
        },
        default=str,
    )
)

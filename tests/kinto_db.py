#!/usr/bin/env python3
"""Reads what a PostgreSQL-backed Kinto stores, straight from its tables (psycopg2, not
Kinto), and prints one JSON object per line, sorted:

- {"object": [parent_id, resource_name, id], "last_modified": ms, "deleted": bool, "data": TEXT}
  for every bucket, group, collection, record and account (not history entries, the
  kinto-tandem journal or the records a restore marks lists with); TEXT is PostgreSQL's own
  rendering of the `jsonb` data, as a string, so that numbers wider than a float compare
  exactly;
- {"ace": [object_id, permission, principal]} for every access control entry on them.

Usage: kinto_db.py POSTGRESQL_URL
"""
import json
import sys

import psycopg2

KINDS = ("bucket", "group", "collection", "record", "account")
MARKER = "tandem-restored"


def main():
    conn = psycopg2.connect(sys.argv[1])
    cur = conn.cursor()
    rows = []
    cur.execute(
        "SELECT parent_id, resource_name, id, as_epoch(last_modified), deleted, data::text "
        "FROM objects WHERE resource_name = ANY(%s)",
        (list(KINDS),),
    )
    for parent, kind, oid, lm, deleted, data in cur.fetchall():
        if kind == "record" and oid == MARKER:
            continue
        rows.append({"object": [parent, kind, oid], "last_modified": lm, "deleted": deleted,
                     "data": data})
    cur.execute("SELECT object_id, permission, principal FROM access_control_entries")
    for object_id, permission, principal in cur.fetchall():
        if "/history/" in object_id or object_id.startswith("/tandem"):
            continue
        rows.append({"ace": [object_id, permission, principal]})
    for row in sorted(rows, key=lambda r: json.dumps(r, sort_keys=True)):
        print(json.dumps(row, sort_keys=True))


if __name__ == "__main__":
    main()

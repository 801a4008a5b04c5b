#!/usr/bin/env python3
"""Reads the whole state of a Kinto server as one account sees it, with kinto-http (an
implementation independent of tandem), and prints one JSON object per line, sorted:

- {"path", "data", "permissions"} for every bucket, group, collection and record (each object
  fetched on its own, so records carry their permissions too);
- {"path": ".../records", "etag": ..., "tombstones": [[id, last_modified], ...]} for every
  collection: the records list's ETag (what a syncing client stores as its cursor; null for a
  list that never had a record, whose ETag is only the time of its first read) and the
  tombstones a `_since=0` read returns; the tombstone a tandem restore ends each records list
  with (id `tandem-restored`) is not among them but in "restore_marker": [id, last_modified].

Principals in permissions are sorted (they are sets).

Usage: kinto_state.py SERVER_URL USER PASSWORD
"""
import json
import sys

from kinto_http import Client

RESTORE_MARKER = "tandem-restored"


def main():
    url, user, password = sys.argv[1:4]
    client = Client(server_url=url, auth=(user, password))
    rows = []
    for b in client.get_buckets():
        bid = b["id"]
        bucket = client.get_bucket(id=bid)
        rows.append({"path": f"/buckets/{bid}", "data": bucket["data"], "permissions": bucket.get("permissions")})
        for g in client.get_groups(bucket=bid):
            group = client.get_group(id=g["id"], bucket=bid)
            rows.append({"path": f"/buckets/{bid}/groups/{g['id']}", "data": group["data"], "permissions": group.get("permissions")})
        for c in client.get_collections(bucket=bid):
            cid = c["id"]
            collection = client.get_collection(id=cid, bucket=bid)
            rows.append({"path": f"/buckets/{bid}/collections/{cid}", "data": collection["data"], "permissions": collection.get("permissions")})
            for r in client.get_records(bucket=bid, collection=cid):
                record = client.get_record(id=r["id"], bucket=bid, collection=cid)
                rows.append({"path": f"/buckets/{bid}/collections/{cid}/records/{r['id']}", "data": record["data"], "permissions": record.get("permissions")})
            everything = client.get_records(bucket=bid, collection=cid, _since=0)
            tombstones = sorted([t["id"], t["last_modified"]] for t in everything if t.get("deleted"))
            marker = [t for t in tombstones if t[0] == RESTORE_MARKER]
            tombstones = [t for t in tombstones if t[0] != RESTORE_MARKER]
            etag = client.get_records_timestamp(bucket=bid, collection=cid)
            row = {"path": f"/buckets/{bid}/collections/{cid}/records", "etag": etag, "tombstones": tombstones}
            if marker:
                row["restore_marker"] = marker[0]
            rows.append(row)
    for row in rows:
        # Principals are sets: Kinto lists them in no particular order.
        for principals in (row.get("permissions") or {}).values():
            principals.sort()
        # A records list never written has no timestamp of its own: Kinto gives it the time
        # of its first read, which no copy can reproduce.
        if "etag" in row and not row["tombstones"] and not any(
            r["path"].startswith(row["path"] + "/") for r in rows
        ):
            row["etag"] = None
    rows.sort(key=lambda row: row["path"].encode())
    for row in rows:
        print(json.dumps(row, ensure_ascii=False, sort_keys=True))


if __name__ == "__main__":
    main()

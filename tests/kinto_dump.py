#!/usr/bin/env python3
"""Reads everything an account can see on a Kinto server with kinto-http, an implementation
independent of tandem, and prints one JSON object per line, sorted by path (bytewise):
{"path": ..., "data": ..., "permissions": ...}. Records carry "permissions": null, since
Kinto's record lists do not include them.

Usage: kinto_dump.py SERVER_URL USER PASSWORD [--record-permissions]
With --record-permissions, each record is also fetched on its own for its permissions.
"""
import json
import sys

from kinto_http import Client


def main():
    url, user, password = sys.argv[1:4]
    record_permissions = "--record-permissions" in sys.argv[4:]
    client = Client(server_url=url, auth=(user, password))
    rows = []
    for b in client.get_buckets():
        bid = b["id"]
        bucket = client.get_bucket(id=bid)
        rows.append((f"/buckets/{bid}", bucket["data"], bucket.get("permissions")))
        for g in client.get_groups(bucket=bid):
            group = client.get_group(id=g["id"], bucket=bid)
            rows.append((f"/buckets/{bid}/groups/{g['id']}", group["data"], group.get("permissions")))
        for c in client.get_collections(bucket=bid):
            cid = c["id"]
            collection = client.get_collection(id=cid, bucket=bid)
            rows.append((f"/buckets/{bid}/collections/{cid}", collection["data"], collection.get("permissions")))
            for r in client.get_records(bucket=bid, collection=cid):
                permissions = None
                if record_permissions:
                    permissions = client.get_record(id=r["id"], bucket=bid, collection=cid).get("permissions")
                rows.append((f"/buckets/{bid}/collections/{cid}/records/{r['id']}", r, permissions))
    rows.sort(key=lambda row: row[0].encode())
    for path, data, permissions in rows:
        print(json.dumps({"path": path, "data": data, "permissions": permissions}, ensure_ascii=False))


if __name__ == "__main__":
    main()

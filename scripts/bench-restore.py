#!/usr/bin/env python3
"""Restore benchmark against real Kinto servers (memory backend, or PostgreSQL with
BENCH_POSTGRES: see benchkit.py), in one run:

1. A plain batch script (urllib, one thread, batches of `batch_max_requests`) writes RECORDS
   records spread over COLLECTIONS collections into a fresh Kinto: Kinto's own write limit.
2. A tandem node ingests that server (`tandem sync`), so its feed holds the same records.
3. `tandem restore` writes them into a second fresh Kinto with the same settings.

Prints seconds and records/s of 1 and 3, their ratio, and checks that the restored records
(data and timestamps) equal the written ones.

Usage: scripts/bench-restore.py [RECORDS COLLECTIONS]   (default 100000 100)
Needs: a release build (cargo build --release) and the test virtualenv (scripts/test).
"""
import os
import subprocess
import sys
import tempfile
import time

import benchkit
from benchkit import PW, TANDEM

RECORDS, COLLECTIONS = (int(a) for a in (sys.argv[1:] or ["100000", "100"]))
BATCH = 200

SETTINGS = "\n".join(
    ["kinto.explicit_permissions = false", "kinto.bucket_create_principals = account:admin"]
    + [f"kinto.{r}_{p}_principals = account:admin" for r in ("bucket", "group", "collection", "record") for p in ("write", "read") if not (r == "bucket" and p == "create")]
    + [f"kinto.{r}_create_principals = account:admin" for r in ("group", "collection", "record")]
)


call = benchkit.request


def start_kinto(workdir):
    return benchkit.start_kinto(workdir, f"kinto.batch_max_requests = {BATCH}\nkinto.paginate_by = 10000\n{SETTINGS}")


def plain_write(url):
    call(url + "buckets/b", "PUT", {"data": {}})
    for c in range(COLLECTIONS):
        call(url + f"buckets/b/collections/c{c:03}", "PUT", {"data": {}})
    requests = []
    for i in range(RECORDS):
        c = i % COLLECTIONS
        requests.append({"method": "PUT", "path": f"/buckets/b/collections/c{c:03}/records/r{i:07}",
                         "body": {"data": {"title": f"record {i}", "done": i % 2 == 0, "tags": ["a", "b"], "note": "x" * 60}}})
    started = time.time()
    for i in range(0, len(requests), BATCH):
        answer, _ = call(url + "batch", "POST", {"requests": requests[i:i + BATCH]})
        assert all(r["status"] < 400 for r in answer["responses"]), answer
    return time.time() - started


def records(url):
    out = {}
    for c in range(COLLECTIONS):
        data, _ = call(url + f"buckets/b/collections/c{c:03}/records")
        for r in data["data"]:
            out[(c, r["id"])] = r
    return out


def main():
    work = tempfile.mkdtemp(prefix="tandem-bench-restore-")
    procs = []
    try:
        os.makedirs(f"{work}/s"), os.makedirs(f"{work}/t")
        s, s_url = start_kinto(f"{work}/s")
        t, t_url = start_kinto(f"{work}/t")
        procs += [s, t]
        plain = plain_write(s_url)
        print(f"plain batch script: {RECORDS} records in {plain:.1f} s ({RECORDS / plain:.0f} records/s)", flush=True)

        # tandem refuses a password file others may read.
        with open(os.open(f"{work}/pw", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(PW)
        with open(f"{work}/tandem.toml", "w") as f:
            f.write(f'[node]\nname = "bench"\ndata_dir = "data"\n[source]\nkind = "kinto"\nurl = "{s_url}"\nuser = "admin"\npassword_file = "pw"\n')
        subprocess.run([TANDEM, "--config", f"{work}/tandem.toml", "init"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([TANDEM, "--config", f"{work}/tandem.toml", "sync"], check=True, stdout=subprocess.DEVNULL)

        started = time.time()
        out = subprocess.run([TANDEM, "--config", f"{work}/tandem.toml", "restore", "--to", t_url,
                              "--user", "admin", "--password-file", f"{work}/pw"],
                             check=True, capture_output=True, text=True)
        restore = time.time() - started
        print(out.stdout.strip())
        print(f"tandem restore: {RECORDS} records in {restore:.1f} s ({RECORDS / restore:.0f} records/s), "
              f"{plain / restore:.2f}x the plain batch script's rate", flush=True)
        assert records(s_url) == records(t_url), "the restored records differ"
        print("restored records equal the written ones (data and timestamps)")
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()

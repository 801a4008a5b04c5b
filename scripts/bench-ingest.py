#!/usr/bin/env python3
"""Ingest benchmark against a real Kinto (memory backend, or PostgreSQL with BENCH_POSTGRES: see
benchkit.py), in one run:

1. Initial ingest of RECORDS records spread over COLLECTIONS collections: the raw download of
   the same pages with curl, the same read with kinto-http.py, and `tandem sync`. Prints
   seconds, records/s and tandem's peak RSS.
2. Steady state with STEADY unchanged collections, polled and then with the history plugin:
   one `tandem sync` pass (seconds, and the requests it made, counted by Kinto's access log),
   then `tandem run` idling for IDLE seconds with poll = 10s (CPU %).

Usage: scripts/bench-ingest.py [RECORDS COLLECTIONS STEADY IDLE]   (RECORDS 0: steady state only;
       STEADY 0: initial ingest only)
Environment: BENCH_CONCURRENCY, a comma-separated list of `[source] concurrency` values to time
tandem with (default "1,2,4,8"); BENCH_GATE, a file to wait for after loading (so that the
timed part runs on an otherwise idle machine); BENCH_ROUNDS, how many times to run every reader
and tandem, interleaved (default 1; medians are printed); BENCH_POSTGRES, a PostgreSQL server for Kinto's
storage and permissions (benchkit.py).
Needs: a release build (cargo build --release), curl, and the test virtualenv (scripts/test).
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import benchkit
from benchkit import BACKEND, PW, TANDEM, VENV

RECORDS, COLLECTIONS, STEADY, IDLE = (int(a) for a in (sys.argv[1:] or ["100000", "100", "1000", "60"]))
SETTINGS = """kinto.bucket_create_principals = system.Authenticated
kinto.bucket_read_principals = account:tandem
kinto.collection_read_principals = account:tandem
kinto.group_read_principals = account:tandem
kinto.record_read_principals = account:tandem
kinto.batch_max_requests = 1000"""


def request(*args, **kw):
    return benchkit.request(*args, **kw)[0]


def start_kinto(workdir, access_log=False, history=False):
    return benchkit.start_kinto(workdir, SETTINGS, ("kinto.plugins.history",) if history else (),
                                access_log=access_log, users=("admin", "tandem"))


def load(url, collections, per_collection, pad=120):
    request(url + "buckets/bench", "PUT", {"data": {}})
    for c in range(collections):
        request(url + f"buckets/bench/collections/c{c:04d}", "PUT", {"data": {}})
        for start in range(0, per_collection, 1000):
            reqs = [{"method": "PUT", "path": f"/buckets/bench/collections/c{c:04d}/records/r{i:06d}",
                     "body": {"data": {"i": i, "title": f"record {i}", "pad": "x" * pad}}}
                    for i in range(start, min(per_collection, start + 1000))]
            request(url + "batch", "POST", {"requests": reqs})


def node(workdir, url, poll="10s", concurrency=None):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "pw"), "w") as f:
        f.write(PW)
    config = os.path.join(workdir, "tandem.toml")
    with open(config, "w") as f:
        f.write(f'[node]\nname = "bench"\ndata_dir = "data"\nlisten = "127.0.0.1:0"\n'
                                f'[source]\nkind = "kinto"\nurl = "{url}"\nuser = "tandem"\npassword_file = "pw"\npoll = "{poll}"\n'
                + (f"concurrency = {concurrency}\n" if concurrency else ""))
    subprocess.run([TANDEM, "--config", config, "init"], check=True, stdout=subprocess.DEVNULL)
    return config


def timed(cmd, **kw):
    """Runs cmd to completion: (seconds, its own peak RSS in KiB)."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return elapsed, usage.ru_maxrss


def main():
    if RECORDS > 0:
        initial_ingest()
    # 2. Steady state: STEADY collections, nothing changing; polled, then through the history.
    for history in (False, True) if STEADY > 0 else ():
        steady_state(history)


def initial_ingest():
    work = tempfile.mkdtemp(prefix="tandem-bench-")
    per = RECORDS // COLLECTIONS
    kinto, url = start_kinto(work)
    try:
        t = time.monotonic()
        load(url, COLLECTIONS, per)
        print(f"loaded {RECORDS} records in {COLLECTIONS} collections in {time.monotonic() - t:.0f} s", flush=True)
        gate = os.environ.get("BENCH_GATE")
        while gate and not os.path.exists(gate):
            time.sleep(1)

        # 1. Raw download of every records page with curl (one process, all URLs).
        urls = os.path.join(work, "urls.txt")
        with open(urls, "w") as f:
            for c in range(COLLECTIONS):
                f.write(f'url = "{url}buckets/bench/collections/c{c:04d}/records?_since=0&_sort=last_modified"\n'
                        f'output = "/dev/null"\n')
        # Kinto answers its first reads of a list slower (caches warming): read everything once.
        timed(["curl", "-sS", "-f", "-u", f"tandem:{PW}", "--config", urls])
        # The same requests tandem makes for a first pass: the root, the bucket list, the bucket,
        # its groups and collections, each collection (permissions are only in the object),
        # and each records list.
        every = os.path.join(work, "every.txt")
        with open(every, "w") as f:
            paths = ["", "buckets", "buckets/bench", "buckets/bench/groups?_sort=last_modified",
                     "buckets/bench/collections?_sort=last_modified"]
            paths += [f"buckets/bench/collections/c{c:04d}" for c in range(COLLECTIONS)]
            for p in paths:
                f.write(f'url = "{url}{p}"\noutput = "/dev/null"\n')
            with open(urls) as lists:
                f.write(lists.read())
        py = os.path.join(work, "read.py")
        with open(py, "w") as f:
            f.write("import sys\nfrom kinto_http import Client\n"
                    f"c = Client(server_url='{url}', auth=('tandem', '{PW}'))\n"
                    f"n = sum(len(c.get_records(bucket='bench', collection='c%04d' % i)) for i in range({COLLECTIONS}))\n"
                    f"assert n == {RECORDS}, n\n")
        # The same pages as tandem reads, through the client: each collection too.
        py_same = os.path.join(work, "read_same.py")
        with open(py_same, "w") as f:
            f.write("import sys\nfrom kinto_http import Client\n"
                    f"c = Client(server_url='{url}', auth=('tandem', '{PW}'))\n"
                    "c.server_info()\nc.get_buckets()\nc.get_bucket(id='bench')\nc.get_groups(bucket='bench')\n"
                    "n = 0\n"
                    f"for col in c.get_collections(bucket='bench'):\n"
                    "    c.get_collection(bucket='bench', id=col['id'])\n"
                    "    n += len(c.get_records(bucket='bench', collection=col['id']))\n"
                    f"assert n == {RECORDS}, n\n")
        levels = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,2,4,8").split(",")]
        rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
        # Every reader once per round, interleaved, so that a slow moment of the machine does
        # not fall on one reader only; medians at the end.
        readers = [("curl, records lists", ["curl", "-sS", "-f", "-u", f"tandem:{PW}", "--config", urls]),
                   ("curl, same requests", ["curl", "-sS", "-f", "-u", f"tandem:{PW}", "--config", every]),
                   ("kinto-http.py, records lists", [os.path.join(VENV, "bin/python"), py]),
                   ("kinto-http.py, same pages", [os.path.join(VENV, "bin/python"), py_same])]
        times = {name: [] for name, _ in readers}
        rss = {}
        print(f"initial ingest of {RECORDS} records ({BACKEND} backend), {rounds} round(s):", flush=True)
        for r in range(rounds):
            for name, cmd in readers:
                times[name].append(timed(cmd)[0])
            for concurrency in levels:
                config = node(os.path.join(work, f"node{r}-{concurrency}"), url, concurrency=concurrency)
                name = f"tandem sync, concurrency {concurrency}"
                elapsed, peak = timed([TANDEM, "--config", config, "sync"])
                times.setdefault(name, []).append(elapsed)
                rss[name] = max(rss.get(name, 0), peak)
            print("  round " + str(r + 1) + ": " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
        same = statistics.median(times["curl, same requests"])
        python_same = statistics.median(times["kinto-http.py, same pages"])
        for name, t in times.items():
            m = statistics.median(t)
            extra = (f"  {m / same:.2f}x curl and {m / python_same:.2f}x kinto-http.py (same requests),"
                     f" peak RSS {rss[name] / 1024:.0f} MiB") if name in rss else ""
            print(f"  {name:32} median {m:6.2f} s  {RECORDS / m:8.0f} records/s{extra}")
    finally:
        kinto.terminate()
        kinto.wait()
        shutil.rmtree(work, ignore_errors=True)


def steady_state(history):
    work2 = tempfile.mkdtemp(prefix="tandem-bench-steady-")
    kinto, url = start_kinto(work2, access_log=True, history=history)
    how = "history plugin" if history else "polling"
    try:
        # With the history plugin, tandem follows buckets whose permissions let it read them.
        request(url + "buckets/steady", "PUT", {"data": {}, "permissions": {"read": ["account:tandem"]}})
        for start in range(0, STEADY, 1000):
            reqs = [{"method": "PUT", "path": f"/buckets/steady/collections/c{c:05d}", "body": {"data": {}}}
                    for c in range(start, min(STEADY, start + 1000))]
            request(url + "batch", "POST", {"requests": reqs})
            reqs = [{"method": "PUT", "path": f"/buckets/steady/collections/c{c:05d}/records/r", "body": {"data": {"c": c}}}
                    for c in range(start, min(STEADY, start + 1000))]
            request(url + "batch", "POST", {"requests": reqs})
        config = node(os.path.join(work2, "node"), url)
        subprocess.run([TANDEM, "--config", config, "sync"], check=True, stdout=subprocess.DEVNULL)
        log = os.path.join(work2, "access.log")
        before = sum(1 for _ in open(log))
        steady, _ = timed([TANDEM, "--config", config, "sync"])
        lines = open(log).read().splitlines()[before:]
        codes = {}
        for l in lines:
            code = l.split()[0] if l.split() else "?"
            codes[code] = codes.get(code, 0) + 1
        print(f"steady state ({how}), {STEADY} unchanged collections: one pass {steady:.2f} s "
              f"(process included), {len(lines)} requests to Kinto, by status: {codes}")

        daemon = subprocess.Popen([TANDEM, "--config", config, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)
        def cpu():
            with open(f"/proc/{daemon.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        c0, t0 = cpu(), time.monotonic()
        time.sleep(IDLE)
        c1, t1 = cpu(), time.monotonic()
        daemon.terminate()
        daemon.wait()
        print(f"idle daemon ({how}) over {IDLE} s (poll 10s, {STEADY} collections): CPU {100 * (c1 - c0) / (t1 - t0):.2f}%")
    finally:
        kinto.terminate()
        kinto.wait()
        shutil.rmtree(work2, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Ingest benchmark against a real Kinto (memory backend, or PostgreSQL with BENCH_POSTGRES: see
benchkit.py), in one run:

1. Initial ingest of RECORDS records spread over COLLECTIONS collections: the raw download of
   the same pages with curl, the same read with kinto-http.py, and `tandem sync`. Prints
   seconds, records/s and tandem's peak RSS. With BENCH_INGEST=journal, Kinto runs the
   kinto-tandem plugin and tandem's first sync reads its dump and journal: curl then reads
   exactly those pages (the root, every /tandem/objects page following Next-Page, the journal
   with If-None-Match), besides the lists path's pages. Kinto's own time for each reader's
   requests (the union of their spans in its access log) is printed too: what a reader takes
   beyond it is the reader's own cost, which Kinto's variance from one round to the next (its
   garbage collector pausing some pages and not others) does not blur.
2. Steady state with STEADY unchanged collections (spread over BENCH_BUCKETS buckets), on each
   path of BENCH_PATHS: polled, with the history plugin, with the kinto-tandem plugin's journal.
   `tandem sync` passes (seconds, process included; the requests each made and the pass as
   Kinto saw it, from the first request's arrival to the last response, both from Kinto's
   access log), then `tandem run` idling for IDLE seconds with poll = 10s (CPU %, the
   daemon's passes in that time, its peak RSS).

Usage: scripts/bench-ingest.py [RECORDS COLLECTIONS STEADY IDLE]   (RECORDS 0: steady state only;
       STEADY 0: initial ingest only)
Environment: BENCH_CONCURRENCY, a comma-separated list of `[source] concurrency` values to time
tandem with (default "1,2,4,8"; "8" with BENCH_INGEST=journal, whose dump does not use it);
BENCH_SEAL=1, also time `tandem sync` of a node whose feed is sealed (`[node] seal = true`)
at each of those levels, beside the plain one; BENCH_INGEST, `lists` (default: Kinto without
the kinto-tandem plugin) or `journal`; BENCH_PATHS, the steady-state paths (default
"polling,history,journal"); BENCH_BUCKETS, how many buckets hold the STEADY collections
(default 1); BENCH_GATE, a file to wait for after loading (so that the timed part runs on an
otherwise idle machine); BENCH_ROUNDS, how many times to run every reader and tandem,
interleaved (the order turned by one each round), and how many steady `tandem sync` passes to
time (default 1; medians are printed); BENCH_POSTGRES, a PostgreSQL server for Kinto's
storage and permissions (benchkit.py).
Needs: a release build (cargo build --release), curl, and the test virtualenv (scripts/test),
which has the kinto-tandem plugin (or TANDEM_TEST_VENV naming one with it: benchkit.py).

The plugin's goals, measured so: `BENCH_BUCKETS=1000 BENCH_PATHS=history,journal BENCH_ROUNDS=5
scripts/bench-ingest.py 0 0 10000 60` (steady state) and `BENCH_INGEST=journal BENCH_ROUNDS=3
scripts/bench-ingest.py 100000 100 0 0` (initial ingest).
"""
import json
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
PLUGIN_SETTINGS = "\nkinto.tandem.principals = account:tandem"
INGEST = os.environ.get("BENCH_INGEST", "lists")
PATHS = os.environ.get("BENCH_PATHS", "polling,history,journal").split(",")
BUCKETS = int(os.environ.get("BENCH_BUCKETS", "1"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1"))
assert INGEST in ("lists", "journal"), INGEST
assert set(PATHS) <= {"polling", "history", "journal"}, PATHS


def request(*args, **kw):
    return benchkit.request(*args, **kw)[0]


def start_kinto(workdir, access_log=False, history=False, plugin=False):
    plugins = (("kinto.plugins.history",) if history else ()) + (("kinto_tandem",) if plugin else ())
    return benchkit.start_kinto(workdir, SETTINGS + (PLUGIN_SETTINGS if plugin else ""), plugins,
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


def node(workdir, url, poll="10s", concurrency=None, seal=False):
    os.makedirs(workdir, exist_ok=True)
    # tandem refuses a secret file open to group or others.
    with open(os.open(os.path.join(workdir, "pw"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(PW)
    config = os.path.join(workdir, "tandem.toml")
    with open(config, "w") as f:
        f.write(f'[node]\nname = "bench"\ndata_dir = "data"\nlisten = "127.0.0.1:0"\n'
                + ("seal = true\n" if seal else "")
                + f'[source]\nkind = "kinto"\nurl = "{url}"\nuser = "tandem"\npassword_file = "pw"\npoll = "{poll}"\n'
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
    # 2. Steady state: STEADY collections, nothing changing; polled, through the history, through
    # the journal.
    for path in PATHS if STEADY > 0 else ():
        steady_state(path)


def plugin_pages(work, url):
    """The pages tandem's first sync reads through the plugin, read once here: a curl config
    reading them all (the journal conditionally, as tandem does), and the number of items."""
    pages = [url + "tandem/objects?_limit=10000"]
    body, headers = benchkit.request(pages[0], user="tandem")
    position = int(headers["ETag"].strip('"'))
    items = len(body["data"])
    while headers.get("Next-Page"):
        pages.append(headers["Next-Page"])
        body, headers = benchkit.request(pages[-1], user="tandem")
        items += len(body["data"])
    config = os.path.join(work, "plugin.txt")
    common = f'silent\nshow-error\nfail\nuser = "tandem:{PW}"\n'
    with open(config, "w") as f:
        f.write(common)
        for page in [url] + pages:
            f.write(f"url = {json.dumps(page)}\noutput = \"/dev/null\"\n")
        # `next` keeps the connections; the header applies to the journal only.
        f.write("next\n" + common + f'header = "If-None-Match: \\"{position}\\""\n'
                f'url = "{url}tandem/journal?_since={position}&_limit=10000"\noutput = "/dev/null"\n')
    return config, items, len(pages) + 2


def initial_ingest():
    work = tempfile.mkdtemp(prefix="tandem-bench-")
    per = RECORDS // COLLECTIONS
    journal = INGEST == "journal"
    kinto, url = start_kinto(work, access_log=journal, plugin=journal)
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
        levels = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "8" if journal else "1,2,4,8").split(",")]
        rounds = ROUNDS
        # Every reader once per round, interleaved, so that a slow moment of the machine does
        # not fall on one reader only; medians at the end.
        readers = [("curl, records lists", ["curl", "-sS", "-f", "-u", f"tandem:{PW}", "--config", urls])]
        if journal:
            plugin, items, requests = plugin_pages(work, url)
            print(f"the plugin's dump: {items} objects; a first sync reads {requests} pages", flush=True)
            timed(["curl", "--config", plugin])
            readers += [("curl, lists path's requests", ["curl", "-sS", "-f", "-u", f"tandem:{PW}", "--config", every]),
                        ("curl, same requests", ["curl", "--config", plugin]),
                        ("kinto-http.py, records lists", [os.path.join(VENV, "bin/python"), py])]
        else:
            readers += [("curl, same requests", ["curl", "-sS", "-f", "-u", f"tandem:{PW}", "--config", every]),
                        ("kinto-http.py, records lists", [os.path.join(VENV, "bin/python"), py]),
                        ("kinto-http.py, same pages", [os.path.join(VENV, "bin/python"), py_same])]
        times = {name: [] for name, _ in readers}
        # Kinto's busy time for each reader's requests, and the reader's time beyond it.
        busy, beyond = {}, {}

        def kinto_time(name, before, elapsed):
            if journal:
                spent = busy_seconds(benchkit.access_log(log, before))
                busy.setdefault(name, []).append(spent)
                beyond.setdefault(name, []).append(elapsed - spent)
        rss = {}
        log = os.path.join(work, "access.log")
        path = "the kinto-tandem journal" if journal else "the lists"
        print(f"initial ingest of {RECORDS} records ({BACKEND} backend, {path}), {rounds} round(s):", flush=True)
        # Every reader and every tandem once per round, the order turned by one each round:
        # Kinto's garbage collector pauses some dump pages and not others depending on where its
        # counters stand, which depends on what ran before, so no reader always follows the same
        # one.
        runs = [(name, cmd, None) for name, cmd in readers]
        runs += [(f"tandem sync, concurrency {c}", None, (c, False)) for c in levels]
        if os.environ.get("BENCH_SEAL") == "1":
            runs += [(f"tandem sync sealed, concurrency {c}", None, (c, True)) for c in levels]
        for r in range(rounds):
            for name, cmd, level in runs[r % len(runs):] + runs[:r % len(runs)]:
                if level is not None:
                    concurrency, seal = level
                    where = os.path.join(work, f"node{r}-{concurrency}" + ("-sealed" if seal else ""))
                    config = node(where, url, concurrency=concurrency, seal=seal)
                    cmd = [TANDEM, "--config", config, "sync"]
                before = sum(1 for _ in open(log)) if journal else 0
                elapsed, peak = timed(cmd)
                times.setdefault(name, []).append(elapsed)
                kinto_time(name, before, elapsed)
                if level is not None:
                    rss[name] = max(rss.get(name, 0), peak)
                if journal and r == 0:
                    seen = benchkit.access_log(log, before)
                    dump = sum(1 for s in seen if s[2].endswith('/tandem/objects'))
                    print(f"  {name}: {len(seen)} requests, by status: {status_counts(seen)}"
                          + (f", {dump} of the dump" if level is not None else ""), flush=True)
            print("  round " + str(r + 1) + ": " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
        same = statistics.median(times["curl, same requests"])
        python_same = statistics.median(times["kinto-http.py, same pages"]) if not journal else None
        for name, t in times.items():
            m = statistics.median(t)
            extra = ""
            if name in rss:
                extra = f"  {m / same:.2f}x curl"
                if python_same:
                    extra += f" and {m / python_same:.2f}x kinto-http.py"
                extra += f" (same requests), peak RSS {rss[name] / 1024:.0f} MiB"
            print(f"  {name:32} median {m:6.2f} s  {RECORDS / m:8.0f} records/s{extra}")
        for name, t in times.items():
            plain = name.replace("tandem sync sealed,", "tandem sync,")
            if plain != name:
                print(f"  {name}: {statistics.median(t) / statistics.median(times[plain]):.2f}x the plain node")
        if busy:
            print("  Kinto's own time for each reader's requests, and the reader's time beyond it"
                  " (medians; rounds):")
            for name in busy:
                print(f"  {name:32} Kinto {statistics.median(busy[name]):6.2f} s"
                      f" ({', '.join(f'{b:.2f}' for b in busy[name])}),"
                      f" beyond {statistics.median(beyond[name]):5.3f} s"
                      f" ({', '.join(f'{b:.3f}' for b in beyond[name])})")
            served = statistics.median(busy["curl, same requests"])
            base = served + statistics.median(beyond["curl, same requests"])
            for name in busy:
                if name.startswith("tandem"):
                    own = served + statistics.median(beyond[name])
                    print(f"  {name}: {own / base:.2f}x curl with Kinto's time held at curl's median")
    finally:
        kinto.terminate()
        kinto.wait()
        shutil.rmtree(work, ignore_errors=True)


def busy_seconds(requests):
    """Seconds in which Kinto was serving at least one of `requests` (from `access_log`):
    overlapping spans (a page asked for while the previous one is sent) count once."""
    total, end = 0.0, None
    for _, _, _, start, stop in sorted(requests, key=lambda r: r[3]):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total / 1000


def status_counts(requests):
    codes = {}
    for r in requests:
        codes[r[0]] = codes.get(r[0], 0) + 1
    return codes


def steady_state(path):
    work2 = tempfile.mkdtemp(prefix="tandem-bench-steady-")
    kinto, url = start_kinto(work2, access_log=True, history=path == "history", plugin=path == "journal")
    how = {"polling": "polling", "history": "history plugin", "journal": "kinto-tandem journal"}[path]
    per = STEADY // BUCKETS
    buckets = ["steady"] if BUCKETS == 1 else [f"b{b:04d}" for b in range(BUCKETS)]
    try:
        # With the history plugin, tandem follows buckets whose permissions let it read them.
        # One bucket per request, and batches within one bucket: Kinto merges a batch's events
        # of one kind, and the history plugin then files several buckets' creations in the
        # first one's history.
        for b in buckets:
            request(url + f"buckets/{b}", "PUT", {"data": {}, "permissions": {"read": ["account:tandem"]}})
            for kind in ("collections", "records"):
                for start in range(0, per, 1000):
                    reqs = [{"method": "PUT", "path": f"/buckets/{b}/collections/c{c:05d}"
                             + ("/records/r" if kind == "records" else ""),
                             "body": {"data": {"c": c} if kind == "records" else {}}}
                            for c in range(start, min(per, start + 1000))]
                    request(url + "batch", "POST", {"requests": reqs})
        config = node(os.path.join(work2, "node"), url)
        log = os.path.join(work2, "access.log")
        before = sum(1 for _ in open(log))
        first, _ = timed([TANDEM, "--config", config, "sync"])
        seen = benchkit.access_log(log, before)
        print(f"first sync ({how}): {first:.2f} s, {len(seen)} requests, Kinto busy answering them "
              f"{sum(r[4] - r[3] for r in seen) / 1000:.2f} s", flush=True)
        walls, spans = [], []
        for _ in range(ROUNDS):
            before = sum(1 for _ in open(log))
            wall, peak = timed([TANDEM, "--config", config, "sync"])
            seen = benchkit.access_log(log, before)
            walls.append(wall)
            spans.append(sum(span for _, span in benchkit.passes(seen, gap_ms=10 ** 9)))
        print(f"steady state ({how}), {per * len(buckets)} unchanged collections in {len(buckets)} bucket(s), "
              f"{ROUNDS} pass(es) of tandem sync (first sync {first:.2f} s): median {statistics.median(walls) * 1000:.0f} ms "
              f"(process included; {', '.join(f'{w * 1000:.0f}' for w in walls)}), as Kinto saw it median "
              f"{statistics.median(spans):.0f} ms; {len(seen)} requests to Kinto, by status: {status_counts(seen)}; "
              f"peak RSS {peak / 1024:.0f} MiB", flush=True)

        daemon = subprocess.Popen([TANDEM, "--config", config, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)
        def cpu():
            with open(f"/proc/{daemon.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        before = sum(1 for _ in open(log))
        c0, t0 = cpu(), time.monotonic()
        time.sleep(IDLE)
        c1, t1 = cpu(), time.monotonic()
        with open(f"/proc/{daemon.pid}/status") as f:
            hwm = next((l.split()[1] for l in f if l.startswith("VmHWM:")), "0")
        daemon.terminate()
        daemon.wait()
        runs = benchkit.passes(benchkit.access_log(log, before))
        print(f"idle daemon ({how}) over {IDLE} s (poll 10s, {per * len(buckets)} collections): "
              f"CPU {100 * (c1 - c0) / (t1 - t0):.3f}% ({(c1 - c0) * 1000:.0f} ms of CPU); {len(runs)} passes, "
              f"requests per pass {sorted(set(n for n, _ in runs))}, as Kinto saw them median "
              f"{statistics.median([s for _, s in runs]) if runs else 0:.0f} ms; peak RSS {int(hwm) / 1024:.0f} MiB", flush=True)
    finally:
        kinto.terminate()
        kinto.wait()
        shutil.rmtree(work2, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Mirror lag benchmark: how long a change written to a migrated bucket on the old Kinto takes
to be visible on the new one, with real Kinto servers (memory backend, or PostgreSQL with
BENCH_POSTGRES: see benchkit.py) and a real `tandem run`, in one run:

1. A source Kinto (with the kinto-tandem plugin, or the history plugin: BENCH_PATH) holds a
   bucket of BENCH_RECORDS records; a node follows it (`[source] poll` = BENCH_POLL) and
   `tandem migrate start --bucket` moves the bucket into a fresh target Kinto (Kinto's
   defaults, plus what a migration target needs: permissions stored as sent, an account that
   writes everything). The run starts once the mirror has caught up.
2. For SECONDS seconds a writer puts RATE records a second into the bucket on the source, on
   a fixed schedule (sent by 4 threads, so that a slow answer does not delay the next
   writes), one request each: new records and updates of existing ones (a share of
   BENCH_UPDATES), each carrying its write number. Meanwhile a reader asks the target for the
   records list every BENCH_READ_EVERY ms, with `_since` and `If-None-Match` on the last
   ETag, and notes when each write first shows there.

A write's lag runs from the source's answer to the write until the answer of the first target
read that shows the record at that write or a later one (a later update of the same record
makes an earlier one visible with it). Prints median, p90, p99 and max, for all writes and for
creates and updates apart, and the lag split at the node's source pass that read the write
(from the source's access log): the wait for that pass's answer, and from there to the target;
the source passes and the mirror's batches on the target (from its access log); each write the
reader never got, and why; and checks at the end that the target's records (data and
timestamps) equal the source's and that the migration still mirrors.

Usage: scripts/bench-mirror.py [SECONDS RATE]   (default 60 50)
Environment: BENCH_PATH, how the node follows the source: `journal` (default: the kinto-tandem
plugin), `history` (Kinto's history plugin) or `polling` (no plugin); BENCH_POLL, `[source]
poll` (default "1s"); BENCH_RECORDS, the records in the bucket before the migration (default
1000); BENCH_UPDATES, the share of writes that update an existing record (default 0.5);
BENCH_READ_EVERY, ms between the reader's requests (default 25); BENCH_KEEP=1 keeps the working
directory (both Kintos' access logs, the daemon's log, every write's times in writes.json);
BENCH_POSTGRES (benchkit.py).
Needs: a release build (cargo build --release) and the test virtualenv (scripts/test), which
has the kinto-tandem plugin (or TANDEM_TEST_VENV naming one with it: benchkit.py).
"""
import base64
import bisect
import json
import math
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import benchkit
from benchkit import BACKEND, PW, TANDEM

SECONDS, RATE = (float(a) for a in (sys.argv[1:] or ["60", "50"]))
PATH = os.environ.get("BENCH_PATH", "journal")
POLL = os.environ.get("BENCH_POLL", "1s")
RECORDS = int(os.environ.get("BENCH_RECORDS", "1000"))
UPDATES = float(os.environ.get("BENCH_UPDATES", "0.5"))
READ_EVERY = float(os.environ.get("BENCH_READ_EVERY", "25")) / 1000
WRITERS = 4
KEEP = os.environ.get("BENCH_KEEP", "") not in ("", "0")
assert PATH in ("journal", "history", "polling"), PATH

BUCKET = "moved"
LIST = f"buckets/{BUCKET}/collections/c/records"
SOURCE_SETTINGS = """kinto.bucket_create_principals = system.Authenticated
kinto.bucket_read_principals = account:tandem
kinto.collection_read_principals = account:tandem
kinto.group_read_principals = account:tandem
kinto.record_read_principals = account:tandem""" + (
    "\nkinto.tandem.principals = account:tandem" if PATH == "journal" else "")
# What docs/operating.md asks of a target without the plugin; `admin` writes there.
TARGET_SETTINGS = "\n".join(
    ["kinto.explicit_permissions = false"]
    + [f"kinto.{kind}_{p}_principals = account:admin"
       for kind in ("bucket", "group", "collection", "record") for p in ("create", "write", "read")])

call = benchkit.request


def start_source(workdir):
    plugins = {"journal": ("kinto_tandem",), "history": ("kinto.plugins.history",), "polling": ()}[PATH]
    return benchkit.start_kinto(workdir, SOURCE_SETTINGS, plugins, access_log=True, users=("admin", "tandem"))


def load(url):
    # The bucket's own read permission lets the node follow it through the history.
    call(url + f"buckets/{BUCKET}", "PUT", {"data": {}, "permissions": {"read": ["account:tandem"]}})
    call(url + f"buckets/{BUCKET}/collections/c", "PUT", {"data": {}})
    for start in range(0, RECORDS, 25):
        requests = [{"method": "PUT", "path": f"/{LIST}/r{i:06d}", "body": {"data": {"w": -1, "pad": "x" * 100}}}
                    for i in range(start, min(RECORDS, start + 25))]
        answer, _ = call(url + "batch", "POST", {"requests": requests})
        assert all(r["status"] < 400 for r in answer["responses"]), answer


def node(workdir, url):
    os.makedirs(workdir, exist_ok=True)
    # tandem refuses a secret file open to group or others.
    with open(os.open(os.path.join(workdir, "pw"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(PW)
    config = os.path.join(workdir, "tandem.toml")
    with open(config, "w") as f:
        f.write(f'[node]\nname = "bench"\ndata_dir = "data"\nlisten = "127.0.0.1:0"\n'
                f'[source]\nkind = "kinto"\nurl = "{url}"\nuser = "tandem"\npassword_file = "pw"\npoll = "{POLL}"\n')
    subprocess.run([TANDEM, "--config", config, "init"], check=True, stdout=subprocess.DEVNULL)
    return config


def migration(config):
    out = subprocess.run([TANDEM, "--config", config, "migrate", "status", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]


def wait_caught_up(config, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = migration(config)
        assert m["state"] == "mirroring", m
        if m["applied_seq"] == m["origin_head"]:
            return m
        time.sleep(0.2)
    raise TimeoutError(f"the mirror did not catch up in {timeout} s: {m}")


class Writes:
    """Every write, by number: its record, whether it created it, when the source answered it,
    and when the target first showed it (None until then)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.all = {}            # write number -> Write
        self.by_record = {}      # record id -> its write numbers, in the order the source took them
        self.through_later = 0   # writes first seen with a later write of the same record
        self.retried = 0         # writes the source asked to retry (409)

    def add(self, n, record, created, acked):
        with self.lock:
            self.all[n] = Write(record, created, acked)
            self.by_record.setdefault(record, []).append(n)

    def show(self, record, w, at):
        """The target shows `record` at write `w`: that write and the earlier ones of the record
        are visible from `at` on."""
        with self.lock:
            for n in self.by_record.get(record, ()):
                if n > w:
                    break
                if self.all[n].seen is None:
                    self.all[n].seen = at
                    self.through_later += n < w

    def unseen(self):
        with self.lock:
            return sum(1 for write in self.all.values() if write.seen is None)


class Write:
    def __init__(self, record, created, acked):
        self.record, self.created, self.acked, self.seen = record, created, acked, None


def writer(url, writes, ids, stop_at, slips):
    """RATE writes a second until `stop_at`, each handed at its time on the schedule to the
    first free one of WRITERS threads, so that a slow answer does not hold back the writes
    after it (`slips` gets how late each was sent). An update picks a record no write is
    under way for, so that the source takes each record's writes in their order."""
    rng = random.Random(1)
    jobs, lock, busy = queue.Queue(), threading.Lock(), set()

    def send():
        while (job := jobs.get()) is not None:
            n, record, created, due = job
            slips.append(time.time() - due)
            for attempt in range(5):
                try:
                    call(url + f"{LIST}/{record}", "PUT", {"data": {"w": n, "pad": "x" * 100}})
                    break
                except urllib.error.HTTPError as e:
                    # On PostgreSQL, Kinto refuses a write that took the same millisecond as
                    # another one of the collection, and asks for a retry.
                    if e.code != 409 or attempt == 4:
                        raise
                    writes.retried += 1
            writes.add(n, record, created, time.time())
            with lock:
                busy.discard(record)
                if created:
                    ids.append(record)

    senders = [Worker(send) for _ in range(WRITERS)]
    start, n = time.time(), 0
    while (due := start + n / RATE) < stop_at and all(s.is_alive() for s in senders):
        time.sleep(max(0.0, due - time.time()))
        with lock:
            record, created = f"w{n:06d}", True
            if rng.random() < UPDATES:
                record, created = rng.choice(ids), False
                while record in busy:
                    record = rng.choice(ids)
            busy.add(record)
        jobs.put((n, record, created, due))
        n += 1
    for _ in senders:
        jobs.put(None)
    for sender in senders:
        sender.result()


def reader(url, writes, stop):
    """Asks the target for the records changed since its last ETag, every READ_EVERY s, until
    `stop` is set; each record shown marks its write seen at the answer's time. Returns the
    number of requests made and every new ETag read, with when."""
    etag, requests, etags = None, 0, []
    while not stop.is_set():
        asked = time.time()
        query = "?_since=" + etag.strip('"') + "&_sort=last_modified" if etag else ""
        req = urllib.request.Request(url + LIST + query)
        req.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{PW}".encode()).decode())
        if etag:
            req.add_header("If-None-Match", etag)
        try:
            with urllib.request.urlopen(req) as r:
                body, etag = json.load(r), r.headers["ETag"]
            answered = time.time()
            etags.append((answered, int(etag.strip('"'))))
            for record in body["data"]:
                if record.get("w", -1) >= 0:
                    writes.show(record["id"], record["w"], answered)
        except urllib.error.HTTPError as e:
            if e.code != 304:
                raise
        requests += 1
        time.sleep(max(0.0, asked + READ_EVERY - time.time()))
    return requests, etags


class Worker(threading.Thread):
    """`fn(*args)` on a thread of its own; `result()` waits for it and returns its value or
    raises its exception."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.value, self.error = fn, args, None, None
        self.start()

    def run(self):
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:
            self.error = e

    def result(self):
        self.join()
        if self.error:
            raise self.error
        return self.value


def quantile(values, q):
    """Nearest-rank quantile of a sorted list."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


def row(name, lags):
    if not lags:
        return f"  {name:38} {0:6}"
    lags = sorted(lags)
    return (f"  {name:38} {len(lags):6} {quantile(lags, 0.5):8.3f} {quantile(lags, 0.9):8.3f} "
            f"{quantile(lags, 0.99):8.3f} {lags[-1]:8.3f}")


def main():
    work = tempfile.mkdtemp(prefix="tandem-bench-mirror-")
    procs = []
    try:
        source, s_url = start_source(f"{work}/source")
        procs.append(source)
        target, t_url = benchkit.start_kinto(f"{work}/target", TARGET_SETTINGS, access_log=True)
        procs.append(target)
        load(s_url)
        config = node(f"{work}/node", s_url)
        subprocess.run([TANDEM, "--config", config, "sync"], check=True, stdout=subprocess.DEVNULL)
        daemon = subprocess.Popen([TANDEM, "--config", config, "run"], stdout=subprocess.DEVNULL,
                                  stderr=open(f"{work}/node/daemon.log", "w"))
        procs.append(daemon)
        while not os.path.exists(f"{work}/node/data/tandem.sock"):
            assert daemon.poll() is None, open(f"{work}/node/daemon.log").read()
            time.sleep(0.05)
        subprocess.run([TANDEM, "--config", config, "migrate", "start", "--bucket", BUCKET, "--to", t_url,
                        "--user", "admin", "--password-file", f"{work}/node/pw"],
                       check=True, capture_output=True)
        wait_caught_up(config)
        print(f"migrated bucket {BUCKET} ({RECORDS} records, {BACKEND} backend); node follows the source "
              f"through {'the ' + PATH if PATH != 'polling' else 'polling'}, poll {POLL}", flush=True)

        writes, slips, ids = Writes(), [], [f"r{i:06d}" for i in range(RECORDS)]
        source_log_from = sum(1 for _ in open(f"{work}/source/access.log"))
        target_log_from = sum(1 for _ in open(f"{work}/target/access.log"))
        stop = threading.Event()
        load_before = os.getloadavg()[0]
        read = Worker(reader, t_url, writes, stop)
        started = time.time()
        Worker(writer, s_url, writes, ids, started + SECONDS, slips).result()
        wrote = time.time() - started
        deadline = time.time() + 60
        while writes.unseen() and time.time() < deadline and read.is_alive():
            time.sleep(0.1)
        stop.set()
        reads, etags = read.result()
        load_after = os.getloadavg()[0]

        done = [writes.all[n] for n in sorted(writes.all)]
        with open(f"{work}/writes.json", "w") as f:
            json.dump([vars(w) for w in done], f)
        lags = [w.seen - w.acked for w in done if w.seen is not None]
        creates = [w.seen - w.acked for w in done if w.seen is not None and w.created]
        updates = [w.seen - w.acked for w in done if w.seen is not None and not w.created]
        # The node's source passes, from the source's access log: every GET there during the
        # run is the node's (the writer only puts). A write is taken to travel with the first
        # pass whose last answer left Kinto after the source answered the write.
        source_requests = [r for r in benchkit.access_log(f"{work}/source/access.log", source_log_from) if r[1] == "GET"]
        passes = pass_groups(source_requests)
        ends = [end for _, end in passes]
        waits, after = [], []
        for w in done:
            end = next_after(ends, w.acked)
            if w.seen is not None and end is not None and end <= w.seen:
                waits.append(end - w.acked)
                after.append(w.seen - end)
        during = [p for p in passes if started <= p[0] <= started + wrote]
        gaps = sorted(b[0] - a[0] for a, b in zip(during, during[1:]))
        batches = sorted((r[4] - r[3]) / 1000 for r in benchkit.access_log(f"{work}/target/access.log", target_log_from)
                         if r[1] == "POST" and r[2].endswith("/batch"))

        n, created = len(done), sum(w.created for w in done)
        print(f"{n} writes in {wrote:.1f} s ({n / wrote:.1f}/s; {created} creates, {n - created} updates; "
              f"sent late by up to {max(slips) * 1000:.0f} ms), "
              f"target read every {READ_EVERY * 1000:.0f} ms ({reads} requests); load average "
              f"{load_before:.1f} before, {load_after:.1f} after", flush=True)
        print("mirror lag, seconds from the source's answer to the first target read showing the write:")
        print(f"  {'':38} {'writes':>6} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        print(row("all", lags))
        print(row("creates", creates))
        print(row("updates", updates))
        print(row("until the node's source pass read it", waits))
        print(row("from there to the target", after))
        print(f"  {len(during)} source passes while writing, one every {quantile(gaps, 0.5):.3f} s (median; max {gaps[-1]:.3f} s); "
              f"{len(batches)} mirror batches on the target for the {n} writes (Kinto took "
              f"{quantile(batches, 0.5) * 1000:.0f} ms for one, median, {batches[-1] * 1000:.0f} ms max)")
        if writes.retried:
            print(f"  {writes.retried} write(s) retried: the source answered 409 (same millisecond as another)")
        if writes.through_later:
            print(f"  {writes.through_later} write(s) first seen through a later update of their record")
        unseen = [(n, w) for n, w in sorted(writes.all.items()) if w.seen is None]
        if unseen:
            print(f"  {len(unseen)} write(s) NOT seen by the reader within 60 s of the last write:")
        for n, w in unseen:
            record = call(t_url + f"{LIST}/{w.record}")[0]["data"]
            lm = record["last_modified"]
            # `_since` answers every record newer than the cursor: one the reader never got was
            # not on the target yet when its cursor first reached the record's timestamp.
            passed = next((t for t, e in etags if e >= lm), None)
            print(f"    write {n} (record {w.record}): on the target at write {record['w']}, last_modified {lm}; "
                  + (f"the reader's ETag reached that {passed - w.acked:.3f} s after the source's answer, before the "
                     "record was written there: a reader following the list with _since never gets it"
                     if passed is not None else "after every ETag the reader read"))

        m = wait_caught_up(config)
        source_records = {r["id"]: r for r in call(s_url + LIST)[0]["data"]}
        target_records = {r["id"]: r for r in call(t_url + LIST)[0]["data"]}
        assert source_records == target_records, "the target's records differ from the source's"
        print(f"the target's records equal the source's (data and timestamps); migration {m['id']} is {m['state']}, "
              f"applied seq {m['applied_seq']}")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        if KEEP:
            print(f"kept {work}: Kinto access logs, the daemon's log, writes.json")
        else:
            shutil.rmtree(work, ignore_errors=True)


def pass_groups(requests, gap_ms=300):
    """The passes among `requests` (from benchkit.access_log), as (first request's arrival, last
    answer) in seconds: a pass starts after `gap_ms` without a request."""
    passes = []
    for r in sorted(requests, key=lambda r: r[3]):
        if passes and r[3] / 1000 - passes[-1][1] <= gap_ms / 1000:
            passes[-1][1] = max(passes[-1][1], r[4] / 1000)
        else:
            passes.append([r[3] / 1000, r[4] / 1000])
    return [tuple(p) for p in passes]


def next_after(times, t):
    """The first of the sorted `times` at or after `t`, or None."""
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


if __name__ == "__main__":
    main()

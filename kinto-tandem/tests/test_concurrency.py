"""Concurrent writers on PostgreSQL: a journal reader never skips an entry.

Each transaction takes its entries' timestamps at insert and commits later; without the
plugin's advisory lock, a transaction that inserted first can commit after one that inserted
later, and a reader that already moved its cursor past the later entry never sees the earlier
one. These tests hold a writer's transaction open after its insert to make that happen.
"""

import random
import threading
import time

import pytest

from conftest import run_threads
from kinto_tandem import journal


pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def prepare(make_kinto, collections):
    """A server whose writers each get a collection of their own, its list timestamp already
    set: two transactions writing into one list wait for each other (Kinto's own timestamp
    row and unique index), which would hide what is tested here."""
    server = make_kinto()
    server.account("admin")
    server.account("tandem")
    server.put("/buckets/b", user="admin", status=201)
    for c in collections:
        server.put(f"/buckets/b/collections/{c}", user="admin", status=201)
        server.put(f"/buckets/b/collections/{c}/records/first", user="admin", status=201)
    return server


def follow(server, cursor):
    """The entries after ``cursor`` (all pages) and the new cursor."""
    entries = []
    response = server.journal(since=cursor)
    while True:
        entries += response.json["data"]
        following = response.headers.get("Next-Page")
        if not following:
            break
        response = server.get(following, user="tandem", status=200)
    return entries, (entries[-1]["last_modified"] if entries else cursor)


def hold_slow_writer(monkeypatch):
    """Makes the thread named ``slow`` stop after inserting its entries, before its commit,
    until ``proceed`` is set; ``inserted`` tells when it got there."""
    inserted, proceed = threading.Event(), threading.Event()
    trim = journal._maybe_trim

    def held(registry, written):
        if threading.current_thread().name == "slow":
            inserted.set()
            assert proceed.wait(10)
        return trim(registry, written)

    monkeypatch.setattr(journal, "_maybe_trim", held)
    return inserted, proceed


def race(server, inserted, proceed):
    """A slow writer inserts first and commits last; a fast one writes meanwhile; a reader
    reads in between and after. Returns the URIs the reader saw."""
    cursor = server.journal().headers["ETag"].strip('"')
    slow = threading.Thread(
        name="slow",
        target=lambda: server.put(
            "/buckets/b/collections/s/records/slow", user="admin", status=201
        ),
    )
    fast = threading.Thread(
        name="fast",
        target=lambda: server.put(
            "/buckets/b/collections/f/records/fast", user="admin", status=201
        ),
    )
    slow.start()
    assert inserted.wait(10)
    time.sleep(0.01)  # a later millisecond than the slow writer's entry
    fast.start()
    fast.join(0.5)  # without the lock it commits; with it, it waits for the slow writer
    seen, cursor = follow(server, cursor)
    proceed.set()
    slow.join(10)
    fast.join(10)
    later, _ = follow(server, cursor)
    return [e["uri"].rsplit("/", 1)[1] for e in seen + later]


def test_the_lock_keeps_a_reader_from_skipping(make_kinto, monkeypatch):
    server = prepare(make_kinto, ["s", "f"])
    inserted, proceed = hold_slow_writer(monkeypatch)
    assert sorted(race(server, inserted, proceed)) == ["fast", "slow"]


def test_without_the_lock_a_reader_skips(make_kinto, monkeypatch):
    """Shows what the lock is for (and that the test above can tell)."""
    server = prepare(make_kinto, ["s", "f"])
    inserted, proceed = hold_slow_writer(monkeypatch)
    monkeypatch.setattr(journal, "lock", lambda storage: None)
    assert race(server, inserted, proceed) == ["fast"]
    stamps = {e["uri"].rsplit("/", 1)[1]: e["last_modified"] for e in server.whole_journal()}
    assert stamps["slow"] < stamps["fast"]


def test_many_writers_and_a_follower(make_kinto, monkeypatch):
    server = prepare(make_kinto, ["a", "b", "c"])
    trim = journal._maybe_trim

    def dawdle(registry, written):
        # Hold the transaction open a little after inserting, as a busy server would.
        time.sleep(random.uniform(0, 0.004))
        return trim(registry, written)

    monkeypatch.setattr(journal, "_maybe_trim", dawdle)
    start = server.journal().headers["ETag"].strip('"')
    done = threading.Event()
    seen = []

    def writer(name):
        def write():
            for i in range(20):
                if i % 4 == 0:
                    requests = [
                        {
                            "method": "PUT",
                            "path": f"/buckets/b/collections/{name}/records/{i}-{k}",
                            "body": {"data": {}},
                        }
                        for k in range(5)
                    ]
                    server.batch(requests)
                else:
                    server.put(
                        f"/buckets/b/collections/{name}/records/{i}", user="admin", status=201
                    )

        return write

    def follower():
        cursor = start
        while True:
            finished = done.is_set()
            entries, cursor = follow(server, cursor)
            seen.extend(entries)
            if finished:
                return

    def writers():
        try:
            run_threads(writer("a"), writer("b"), writer("c"))
        finally:
            done.set()

    run_threads(writers, follower)
    whole, _ = follow(server, start)
    assert len(whole) == 3 * (15 + 5 * 5)
    assert [e["last_modified"] for e in seen] == [e["last_modified"] for e in whole]

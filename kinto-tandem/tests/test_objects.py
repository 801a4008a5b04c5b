"""The objects dump: every object, in path-segment order, resumable, with record tombstones."""


def build(server):
    """A small server: two members' buckets, collections, records (one deleted), groups."""
    alice = server.account("alice")
    bob = server.account("bob")
    server.put("/buckets/b-x", user=bob, status=201)
    server.put(
        "/buckets/b",
        {"data": {"t": 1}, "permissions": {"read": ["account:bob"]}},
        user=alice,
        status=201,
    )
    server.put(
        "/buckets/b/groups/g1", {"data": {"members": ["account:bob"]}}, user=alice, status=201
    )
    for c in ("c2", "c1"):
        server.put(f"/buckets/b/collections/{c}", user=alice, status=201)
    for r in ("r2", "r1", "r3"):
        server.put(
            f"/buckets/b/collections/c1/records/{r}", {"data": {"r": r}}, user=alice, status=201
        )
    # A live record that looks like a tombstone, and a real one.
    server.put(
        "/buckets/b/collections/c1/records/r0", {"data": {"deleted": True}}, user=alice, status=201
    )
    tombstone = server.delete("/buckets/b/collections/c1/records/r2", user=alice, status=200).json[
        "data"
    ]
    server.put("/buckets/b-x/collections/c", user=bob, status=201)
    server.put("/buckets/b-x/collections/c/records/x", user=bob, status=201)
    # A deleted collection and bucket: no tombstones of theirs are listed.
    server.put("/buckets/gone", user=alice, status=201)
    server.delete("/buckets/gone", user=alice, status=200)
    server.put("/buckets/b/collections/c3", user=alice, status=201)
    server.delete("/buckets/b/collections/c3", user=alice, status=200)
    return tombstone


EXPECTED_ORDER = [
    "/accounts/admin",
    "/accounts/alice",
    "/accounts/bob",
    "/accounts/tandem",
    "/buckets/b",
    "/buckets/b/collections/c1",
    "/buckets/b/collections/c1/records/r0",
    "/buckets/b/collections/c1/records/r1",
    "/buckets/b/collections/c1/records/r2",
    "/buckets/b/collections/c1/records/r3",
    "/buckets/b/collections/c2",
    "/buckets/b/groups/g1",
    "/buckets/b-x",
    "/buckets/b-x/collections/c",
    "/buckets/b-x/collections/c/records/x",
]


def test_order_tombstones_and_permissions(server):
    tombstone = build(server)
    items, etag = server.dump()
    assert [i["uri"] for i in items] == EXPECTED_ORDER
    by_uri = {i["uri"]: i for i in items}
    assert by_uri["/buckets/b/collections/c1/records/r2"] == {
        "uri": "/buckets/b/collections/c1/records/r2",
        "resource_name": "record",
        "data": tombstone,
    }
    lookalike = by_uri["/buckets/b/collections/c1/records/r0"]
    assert lookalike["data"]["deleted"] is True and "permissions" in lookalike
    assert by_uri["/buckets/b"]["permissions"] == {
        "read": ["account:bob"],
        "write": ["account:alice"],
    }
    assert by_uri["/buckets/b"]["data"] == {
        "t": 1,
        "id": "b",
        "last_modified": by_uri["/buckets/b"]["data"]["last_modified"],
    }
    assert by_uri["/accounts/alice"]["data"]["password"].startswith("$2b$")
    assert [i["resource_name"] for i in items[:5]] == ["account"] * 4 + ["bucket"]
    assert {i["resource_name"] for i in items} == {
        "account",
        "bucket",
        "collection",
        "group",
        "record",
    }
    # The ETag is the journal's position.
    assert etag == server.journal().headers["ETag"]


def test_pages_resume_after_each_uri(server):
    build(server)
    whole, _ = server.dump()
    for limit in (1, 2, 5):
        paged, _ = server.dump(limit=limit)
        assert paged == whole, limit
    # Resuming after any object, even one that no longer exists.
    for i, item in enumerate(whole):
        response = server.get(f"/tandem/objects?_after={item['uri']}", user="tandem", status=200)
        assert response.json["data"] == whole[i + 1 :], item["uri"]
    for after, first in [
        ("/accounts/aaa", "/accounts/admin"),
        ("/accounts/zzz", "/buckets/b"),
        ("/buckets/a", "/buckets/b"),
        ("/buckets/b/collections/c0", "/buckets/b/collections/c1"),
        ("/buckets/b/collections/c1/records/r25", "/buckets/b/collections/c1/records/r3"),
        ("/buckets/b/collections/c15", "/buckets/b/collections/c2"),
        ("/buckets/b/collections/c9", "/buckets/b/groups/g1"),
        ("/buckets/b/collections/c2/records/zz", "/buckets/b/groups/g1"),
        ("/buckets/b/groups/g0", "/buckets/b/groups/g1"),
        ("/buckets/b/groups/g2", "/buckets/b-x"),
        ("/buckets/b-w", "/buckets/b-x"),
    ]:
        data = server.get(
            f"/tandem/objects?_after={after}&_limit=1", user="tandem", status=200
        ).json["data"]
        assert [i["uri"] for i in data] == [first], after
    assert server.get("/tandem/objects?_after=/buckets/c", user="tandem").json["data"] == []


def test_etag_is_taken_before_the_page(server):
    build(server)
    first = server.get("/tandem/objects?_limit=2", user="tandem", status=200)
    position = first.headers["ETag"]
    server.put("/buckets/b/collections/c2/records/late", user="alice", status=201)
    # Later pages carry the journal's position at their own time; the reader keeps the first.
    later = server.get(first.headers["Next-Page"], user="tandem", status=200)
    assert int(later.headers["ETag"].strip('"')) > int(position.strip('"'))
    (late,) = server.journal(since=position.strip('"')).json["data"]
    assert late["uri"] == "/buckets/b/collections/c2/records/late"


def test_bad_parameters(server):
    for query in (
        "_after=/buckets",
        "_after=/nothing/x",
        "_after=buckets/b",
        "_after=/buckets/b/collections",
        "_limit=0",
        "_after=/buckets/b%0A",
    ):
        response = server.get(f"/tandem/objects?{query}", user="tandem", status=400)
        assert response.json["errno"] == 107, query


def test_small_storage_fetch_size(make_kinto):
    """Pages and restore lookups stay within what the storage backend returns at once."""
    server = make_kinto(storage_max_fetch_size=3)
    server.account("admin")
    build(server)
    items, _ = server.dump()
    assert [i["uri"] for i in items] == EXPECTED_ORDER
    first = server.get("/tandem/objects", user="tandem", status=200)
    assert len(first.json["data"]) == 3 and "Next-Page" in first.headers
    assert len(server.journal(limit=100).json["data"]) == 3
    entries = server.whole_journal()
    assert len(entries) > 3
    assert [e["last_modified"] for e in entries] == sorted(e["last_modified"] for e in entries)
    target = make_kinto(storage_max_fetch_size=3)
    results = target.restore(items).json["results"]
    assert [r["status"] for r in results][4:] == ["created"] * (len(items) - 4)
    assert target.restore(items).json["results"][4:] == [
        {"uri": i["uri"], "status": "unchanged"} for i in items[4:]
    ]

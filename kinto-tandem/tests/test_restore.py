"""The restore endpoint: objects written exactly, with their timestamps, ACLs and hashes."""

import time

import pytest
from kinto.core.storage import Sort

from kinto_tandem import uris


def build_source(server):
    """Members' data with ACLs the restoring account is in none of, a group used in an ACL,
    tombstones, and a record with a timestamp forced into the past."""
    alice = server.account("alice")
    bob = server.account("bob")
    server.put(
        "/buckets/b",
        {"data": {"title": "B"}, "permissions": {"read": ["account:bob"]}},
        user=alice,
        status=201,
    )
    server.put(
        "/buckets/b/groups/readers", {"data": {"members": ["account:bob"]}}, user=alice, status=201
    )
    server.put(
        "/buckets/b/collections/c",
        {"data": {"n": 1.5}, "permissions": {"read": ["/buckets/b/groups/readers"]}},
        user=alice,
        status=201,
    )
    for r in range(6):
        server.put(
            f"/buckets/b/collections/c/records/r{r}",
            {
                "data": {"r": r, "nested": {"list": [1, "two", None]}},
                "permissions": {"read": ["system.Authenticated"]},
            },
            user=alice,
            status=201,
        )
    server.delete("/buckets/b/collections/c/records/r4", user=alice, status=200)
    server.put(
        "/buckets/b/collections/c/records/old",
        {"data": {"last_modified": 1000}},
        user=alice,
        status=201,
    )
    server.put("/buckets/b/collections/empty", user=alice, status=201)
    server.put(
        "/buckets/default/collections/tasks/records/t1",
        {"data": {"done": True}},
        user=bob,
        status=201,
    )
    return alice, bob


def restore_all(target, items, chunk=4):
    """Restores the dump's items in requests of ``chunk`` (parents come first in a dump)."""
    results = []
    for i in range(0, len(items), chunk):
        results += target.restore(items[i : i + chunk]).json["results"]
    return results


def mine(items, skip=("/accounts/admin", "/accounts/tandem")):
    return [i for i in items if i["uri"] not in skip]


def records_list(server, path, user):
    response = server.get(f"{path}/records?_since=0&_sort=last_modified", user=user, status=200)
    return int(response.headers["ETag"].strip('"')), response.json["data"]


def test_round_trip_is_exact(make_kinto):
    source = make_kinto()
    source.account("admin")
    build_source(source)
    items, _ = source.dump()

    target = make_kinto(history=True)
    target.account("admin")
    started = int(time.time() * 1000)
    results = restore_all(target, mine(items, skip=()))
    finished = int(time.time() * 1000)
    by_uri = {r["uri"]: r for r in results}
    # The restoring account exists on the target already: the target's own is kept.
    assert by_uri["/accounts/tandem"]["status"] == "conflict"
    assert by_uri["/accounts/admin"]["status"] == "conflict"
    assert {r["status"] for r in mine(results)} == {"created"}
    assert [r["uri"] for r in results] == [i["uri"] for i in items]

    restored, _ = target.dump()
    assert mine(restored) == mine(items)

    # Members log in with their old passwords.
    for user in ("alice", "bob"):
        assert target.get("/", user=user, status=200).json["user"]["id"] == f"account:{user}"
    # The default bucket's id is the same (same secrets), with the record in it.
    default_id = target.get("/", user="bob").json["user"]["bucket"]
    target.get(f"/buckets/{default_id}/collections/tasks/records/t1", user="bob", status=200)
    # The group's members have its principal again: bob reads through it.
    target.get("/buckets/b/collections/c", user="bob", status=200)

    # Records and tombstones at their own timestamps; the list's timestamp is the restore's.
    source_etag, source_records = records_list(source, "/buckets/b/collections/c", "alice")
    target_etag, target_records = records_list(target, "/buckets/b/collections/c", "alice")
    assert target_records == source_records
    assert any(r.get("deleted") for r in target_records)
    assert started <= target_etag <= finished + 1
    assert target_etag > max(r["last_modified"] for r in target_records)
    assert source_etag == max(r["last_modified"] for r in source_records)


def test_permissions_exact_and_restorer_not_added(make_kinto):
    target = make_kinto(explicit_permissions="true")
    target.account("tandem")
    acl = {"read": ["account:x", "system.Everyone"], "write": ["account:y"]}
    results = target.restore(
        [
            {
                "uri": "/buckets/b",
                "resource_name": "bucket",
                "data": {"id": "b", "last_modified": 10},
                "permissions": {"collection:create": ["account:z"]},
            },
            {
                "uri": "/buckets/b/collections/c",
                "resource_name": "collection",
                "data": {"id": "c", "last_modified": 20},
                "permissions": {},
            },
            {
                "uri": "/buckets/b/collections/c/records/r",
                "resource_name": "record",
                "data": {"id": "r", "last_modified": 30, "v": 1},
                "permissions": acl,
            },
        ]
    ).json["results"]
    assert [r["status"] for r in results] == ["created"] * 3
    acls = target.permission.get_objects_permissions(
        ["/buckets/b", "/buckets/b/collections/c", "/buckets/b/collections/c/records/r"]
    )
    assert [{k: sorted(v) for k, v in a.items() if v} for a in acls] == [
        {"collection:create": ["account:z"]},
        {},
        acl,
    ]
    # The journal has them, as written.
    entries = target.whole_journal()[-3:]
    assert [(e["action"], e["uri"], e["permissions"]) for e in entries] == [
        ("create", "/buckets/b", {"collection:create": ["account:z"]}),
        ("create", "/buckets/b/collections/c", {}),
        ("create", "/buckets/b/collections/c/records/r", acl),
    ]
    assert entries[2]["data"] == {"id": "r", "last_modified": 30, "v": 1}


@pytest.mark.parametrize("explicit", ["true", "false"])
def test_history_entries_as_the_history_plugin_writes_them(make_kinto, explicit):
    target = make_kinto(
        history=True, explicit_permissions=explicit, bucket_create_principals="account:tandem"
    )
    target.account("tandem")
    alice = target.account("alice")
    acl = {"read": ["account:alice"]}
    items = [
        {
            "uri": "/buckets/b",
            "resource_name": "bucket",
            "data": {"id": "b", "last_modified": 10},
            "permissions": {"write": ["account:tandem"], "read": ["account:bob"]},
        },
        {
            "uri": "/buckets/b/groups/g",
            "resource_name": "group",
            "data": {"id": "g", "last_modified": 15, "members": ["account:alice"]},
            "permissions": {},
        },
        {
            "uri": "/buckets/b/collections/c",
            "resource_name": "collection",
            "data": {"id": "c", "last_modified": 20},
            "permissions": {"read": ["account:carol"]},
        },
        {
            "uri": "/buckets/b/collections/c/records/r",
            "resource_name": "record",
            "data": {"id": "r", "last_modified": 30, "v": 1},
            "permissions": acl,
        },
        {
            "uri": "/buckets/b/collections/c/records/t",
            "resource_name": "record",
            "data": {"id": "t", "last_modified": 40, "deleted": True},
        },
    ]
    target.restore(items)
    history = target.get("/buckets/b/history?_sort=last_modified", user="tandem", status=200).json[
        "data"
    ]
    assert [(h["action"], h["uri"]) for h in history] == [
        ("create", "/buckets/b"),
        ("create", "/buckets/b/groups/g"),
        ("create", "/buckets/b/collections/c"),
        ("create", "/buckets/b/collections/c/records/r"),
        ("delete", "/buckets/b/collections/c/records/t"),
    ]
    for entry, item in zip(history, items):
        assert entry["target"]["data"] == item["data"]
        assert entry["target"]["permissions"] == item.get("permissions", {})
        assert entry["user_id"] == "account:tandem"
        assert entry["resource_name"] == item["resource_name"]
    record_entry = history[3]
    assert (record_entry["collection_id"], record_entry["record_id"]) == ("c", "r")
    assert "bucket_id" not in record_entry and history[0]["bucket_id"] == "b"

    # The same keys as the plugin's own entry for a write through the API.
    target.put("/buckets/b/collections/c/records/api", user="tandem", status=201)
    (own,) = target.get("/buckets/b/history?record_id=api", user="tandem").json["data"]
    assert set(own) == set(record_entry)
    assert set(own["target"]) == set(record_entry["target"])

    # With explicit permissions, entries are readable by whoever reads the object, its
    # collection or bucket (what the plugin sets on them); without, by inheritance only.
    (entry_acl,) = target.permission.get_objects_permissions(
        [f"/buckets/b/history/{record_entry['id']}"]
    )
    if explicit == "true":
        assert sorted(entry_acl["read"]) == [
            "account:alice",
            "account:bob",
            "account:carol",
            "account:tandem",
        ]
        assert [h["uri"] for h in target.get("/buckets/b/history", user=alice).json["data"]] == [
            "/buckets/b/collections/c/records/r"
        ]
    else:
        assert entry_acl == {}


def test_rerun_is_unchanged_and_writes_nothing(server):
    build_source(server)
    items, _ = server.dump()
    position = server.journal().headers["ETag"]
    results = restore_all(server, items, chunk=100)
    assert {r["status"] for r in results} == {"unchanged"}
    assert server.journal().headers["ETag"] == position


def test_conflicts(server):
    server.put("/buckets/b", user="admin")
    server.put("/buckets/b/collections/c", user="admin")
    live = server.put("/buckets/b/collections/c/records/live", user="admin").json["data"]
    tomb = server.put("/buckets/b/collections/c/records/tomb", user="admin").json["data"]
    tomb = server.delete("/buckets/b/collections/c/records/tomb", user="admin").json["data"]
    base = "/buckets/b/collections/c/records"
    results = server.restore(
        [
            # A live object there with another timestamp: not touched.
            {
                "uri": f"{base}/live",
                "resource_name": "record",
                "data": {"id": "live", "last_modified": 5},
                "permissions": {},
            },
            # A tombstone cannot replace a live object.
            {
                "uri": f"{base}/live",
                "resource_name": "record",
                "data": {"id": "live", "last_modified": 6, "deleted": True},
            },
            # The same tombstone: unchanged; another one: written over it.
            {"uri": f"{base}/tomb", "resource_name": "record", "data": tomb},
            {
                "uri": f"{base}/tomb",
                "resource_name": "record",
                "data": {"id": "tomb", "last_modified": 7, "deleted": True},
            },
            # A live object over a tombstone: created.
            {
                "uri": f"{base}/tomb",
                "resource_name": "record",
                "data": {"id": "tomb", "last_modified": 8, "x": 1},
                "permissions": {},
            },
            # Another object of the list holds that timestamp already.
            {
                "uri": f"{base}/other",
                "resource_name": "record",
                "data": {"id": "other", "last_modified": live["last_modified"]},
                "permissions": {},
            },
            {
                "uri": f"{base}/other2",
                "resource_name": "record",
                "data": {"id": "other2", "last_modified": 8, "deleted": True},
            },
        ]
    ).json["results"]
    assert results == [
        {
            "uri": f"{base}/live",
            "status": "conflict",
            "existing_last_modified": live["last_modified"],
        },
        {
            "uri": f"{base}/live",
            "status": "conflict",
            "existing_last_modified": live["last_modified"],
        },
        {"uri": f"{base}/tomb", "status": "unchanged"},
        {"uri": f"{base}/tomb", "status": "created"},
        {"uri": f"{base}/tomb", "status": "created"},
        {"uri": f"{base}/other", "status": "conflict"},
        {"uri": f"{base}/other2", "status": "conflict"},
    ]
    assert server.get(f"{base}/live", user="admin").json["data"] == live
    assert server.get(f"{base}/tomb", user="admin").json["data"] == {
        "id": "tomb",
        "last_modified": 8,
        "x": 1,
    }
    server.get(f"{base}/other", user="admin", status=404)


def test_tombstones_keep_their_timestamp_and_list_etag(server):
    server.put("/buckets/b", user="admin")
    server.put("/buckets/b/collections/c", user="admin")
    base = "/buckets/b/collections/c"
    started = int(time.time() * 1000)
    results = server.restore(
        [
            {
                "uri": f"{base}/records/a",
                "resource_name": "record",
                "data": {"id": "a", "last_modified": 100, "deleted": True},
            },
            {
                "uri": f"{base}/records/b",
                "resource_name": "record",
                "data": {"id": "b", "last_modified": 200},
                "permissions": {},
            },
        ]
    ).json["results"]
    assert {r["status"] for r in results} == {"created"}
    etag, listed = records_list(server, base, "admin")
    assert listed == [
        {"id": "a", "last_modified": 100, "deleted": True},
        {"id": "b", "last_modified": 200},
    ]
    assert etag >= started
    # A tombstone in the future moves the list's timestamp to it, as a delete does.
    future = etag + 10_000
    server.restore(
        [
            {
                "uri": f"{base}/records/z",
                "resource_name": "record",
                "data": {"id": "z", "last_modified": future, "deleted": True},
            }
        ]
    )
    etag, listed = records_list(server, base, "admin")
    assert etag == future and listed[-1] == {"id": "z", "last_modified": future, "deleted": True}
    # Writes after it continue from there, as on the source.
    after = server.put(f"{base}/records/next", user="admin").json["data"]
    assert after["last_modified"] > future


def test_accounts_keep_their_password_hash(make_kinto):
    source = make_kinto()
    source.account("carol", "carols-own-pw")
    items, _ = source.dump()
    (carol,) = [i for i in items if i["uri"] == "/accounts/carol"]
    target = make_kinto()
    assert target.restore([carol]).json["results"] == [
        {"uri": "/accounts/carol", "status": "created"}
    ]
    assert target.get("/", user=("carol", "carols-own-pw")).json["user"]["id"] == "account:carol"
    target.get("/tandem/journal", user=("carol", "wrong"), status=401)
    # She can change it, as before.
    target.patch(
        "/accounts/carol",
        {"data": {"password": "new"}},
        user=("carol", "carols-own-pw"),
        status=200,
    )
    assert target.get("/", user=("carol", "new")).json["user"]["id"] == "account:carol"


GOOD = {
    "uri": "/buckets/ok",
    "resource_name": "bucket",
    "data": {"id": "ok", "last_modified": 1},
    "permissions": {},
}


@pytest.mark.parametrize(
    "body, name",
    [
        (None, None),
        ([], "objects"),
        ({"objects": {}}, "objects"),
        ({"objects": [], "extra": 1}, "extra"),
        ({"objects": [GOOD, 1]}, "objects.1"),
        ({"objects": [GOOD, {**GOOD, "extra": 1}]}, "objects.1.extra"),
        ({"objects": [GOOD, {**GOOD, "uri": "/buckets"}]}, "objects.1.uri"),
        ({"objects": [GOOD, {**GOOD, "uri": 12}]}, "objects.1.uri"),
        (
            {
                "objects": [
                    GOOD,
                    {**GOOD, "uri": "/buckets/a b", "data": {"id": "a b", "last_modified": 1}},
                ]
            },
            "objects.1.uri",
        ),
        ({"objects": [GOOD, {**GOOD, "resource_name": "record"}]}, "objects.1.resource_name"),
        ({"objects": [GOOD, {**GOOD, "data": []}]}, "objects.1.data"),
        (
            {"objects": [GOOD, {**GOOD, "data": {"id": "other", "last_modified": 1}}]},
            "objects.1.data.id",
        ),
        ({"objects": [GOOD, {**GOOD, "data": {"id": "ok"}}]}, "objects.1.data.last_modified"),
        (
            {"objects": [GOOD, {**GOOD, "data": {"id": "ok", "last_modified": "1"}}]},
            "objects.1.data.last_modified",
        ),
        (
            {"objects": [GOOD, {**GOOD, "data": {"id": "ok", "last_modified": True}}]},
            "objects.1.data.last_modified",
        ),
        (
            {"objects": [GOOD, {**GOOD, "data": {"id": "ok", "last_modified": 2**53}}]},
            "objects.1.data.last_modified",
        ),
        (
            {"objects": [GOOD, {**GOOD, "data": {"id": "ok", "last_modified": 1.5}}]},
            "objects.1.data.last_modified",
        ),
        (
            {"objects": [GOOD, {k: v for k, v in GOOD.items() if k != "permissions"}]},
            "objects.1.data",
        ),
        ({"objects": [GOOD, {**GOOD, "permissions": []}]}, "objects.1.permissions"),
        (
            {"objects": [GOOD, {**GOOD, "permissions": {"record:create": []}}]},
            "objects.1.permissions.record:create",
        ),
        (
            {"objects": [GOOD, {**GOOD, "permissions": {"read": "account:x"}}]},
            "objects.1.permissions.read",
        ),
        (
            {"objects": [GOOD, {**GOOD, "permissions": {"read": [1]}}]},
            "objects.1.permissions.read",
        ),
        (
            {
                "objects": [
                    GOOD,
                    {
                        "uri": "/accounts/x",
                        "resource_name": "account",
                        "data": {"id": "x", "last_modified": 1},
                        "permissions": {},
                    },
                ]
            },
            "objects.1.data.password",
        ),
        (
            {
                "objects": [
                    GOOD,
                    {
                        "uri": "/buckets/ok/groups/g",
                        "resource_name": "group",
                        "data": {"id": "g", "last_modified": 1, "members": "x"},
                        "permissions": {},
                    },
                ]
            },
            "objects.1.data.members",
        ),
        # Parents must exist or come first.
        (
            {
                "objects": [
                    GOOD,
                    {
                        "uri": "/buckets/missing/collections/c",
                        "resource_name": "collection",
                        "data": {"id": "c", "last_modified": 1},
                        "permissions": {},
                    },
                ]
            },
            "objects.1.uri",
        ),
        (
            {
                "objects": [
                    {
                        "uri": "/buckets/ok/collections/c",
                        "resource_name": "collection",
                        "data": {"id": "c", "last_modified": 1},
                        "permissions": {},
                    },
                    GOOD,
                ]
            },
            "objects.0.uri",
        ),
        (
            {
                "objects": [
                    GOOD,
                    {
                        "uri": "/buckets/ok/collections/c/records/r",
                        "resource_name": "record",
                        "data": {"id": "r", "last_modified": 1},
                        "permissions": {},
                    },
                ]
            },
            "objects.1.uri",
        ),
    ],
)
def test_malformed_requests_write_nothing(server, body, name):
    position = server.journal().headers["ETag"]
    response = server.post("/tandem/restore", body, user="tandem", status=400)
    assert response.json["errno"] == 107 and response.json["code"] == 400
    assert response.json["details"][0]["name"] == name, response.json
    assert response.json["details"][0]["location"] == "body"
    server.get("/buckets/ok", user="tandem", status=403)
    assert (
        server.storage.list_all(resource_name="bucket", parent_id="", include_deleted=True) == []
    )
    assert server.journal().headers["ETag"] == position


def test_at_most_restore_max_objects(make_kinto):
    server = make_kinto(tandem__restore_max_objects=3)
    response = server.post(
        "/tandem/restore", {"objects": [GOOD] * 4}, user=server.account("tandem"), status=400
    )
    assert response.json["details"][0]["name"] == "objects"
    assert "at most 3" in response.json["message"]
    assert (
        server.restore([GOOD] * 3).json["results"][1:]
        == [{"uri": "/buckets/ok", "status": "unchanged"}] * 2
    )


def test_strings_with_nul(server):
    """PostgreSQL cannot store U+0000 in a string: named before anything is written."""
    nul = {**GOOD, "data": {"id": "ok", "last_modified": 1, "t\x00": "x"}}
    if server.backend == "postgresql":
        response = server.post("/tandem/restore", {"objects": [nul]}, user="tandem", status=400)
        assert response.json["details"][0]["name"] == "objects.0.data"
        nul = {**GOOD, "permissions": {"read": ["account:\x00"]}}
        response = server.post("/tandem/restore", {"objects": [nul]}, user="tandem", status=400)
        assert response.json["details"][0]["name"] == "objects.0.permissions"
    else:
        assert server.restore([nul]).json["results"][0]["status"] == "created"


def test_timestamps_below_zero_and_at_zero(server):
    base = "/buckets/ok/collections/c/records"
    items = [
        GOOD,
        {
            **GOOD,
            "uri": "/buckets/ok/collections/c",
            "resource_name": "collection",
            "data": {"id": "c", "last_modified": 5},
        },
        {
            "uri": f"{base}/neg",
            "resource_name": "record",
            "data": {"id": "neg", "last_modified": -5},
            "permissions": {},
        },
        {
            "uri": f"{base}/zero",
            "resource_name": "record",
            "data": {"id": "zero", "last_modified": 0, "deleted": True},
        },
        {
            "uri": f"{base}/one",
            "resource_name": "record",
            "data": {"id": "one", "last_modified": 1, "deleted": True},
        },
    ]
    assert {r["status"] for r in server.restore(items).json["results"]} == {"created"}
    listed = server.storage.list_all(
        resource_name="record",
        parent_id="/buckets/ok/collections/c",
        sorting=[Sort("last_modified", 1)],
        include_deleted=True,
    )
    assert listed == [items[2]["data"], items[3]["data"], items[4]["data"]]


def test_not_json_is_400(server):
    response = server.post("/tandem/restore", raw=b"{not json", user="tandem", status=400)
    assert response.json["errno"] == 107


def test_groups_give_their_principal(server):
    alice = server.account("alice")
    results = server.restore(
        [
            {
                "uri": "/buckets/b",
                "resource_name": "bucket",
                "data": {"id": "b", "last_modified": 10},
                "permissions": {"read": ["/buckets/b/groups/g"]},
            },
            {
                "uri": "/buckets/b/groups/g",
                "resource_name": "group",
                "data": {"id": "g", "last_modified": 11, "members": ["account:alice"]},
                "permissions": {},
            },
        ]
    ).json["results"]
    assert {r["status"] for r in results} == {"created"}
    assert "/buckets/b/groups/g" in server.get("/", user=alice).json["user"]["principals"]
    server.get("/buckets/b", user=alice, status=200)
    # And a restored group tombstone takes it away from no one else's groups.
    ref = uris.parse("/buckets/b/groups/g")
    assert server.storage.get(resource_name="group", parent_id=ref.parent_id, object_id="g")[
        "members"
    ] == ["account:alice"]

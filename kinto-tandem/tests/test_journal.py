"""The journal: one entry per changed object, with its stored data and complete ACL."""

import bcrypt
import pytest

from kinto_tandem import uris


def entries_for(entries, uri):
    return [e for e in entries if e["uri"] == uri]


def stored(server, uri):
    """The object as the storage backend holds it, and its ACL as the permission backend
    does (Kinto's own GET would hide both from an account outside the ACLs)."""
    ref = uris.parse(uri)
    data = server.storage.get(
        resource_name=ref.resource_name, parent_id=ref.parent_id, object_id=ref.id
    )
    (acl,) = server.permission.get_objects_permissions([uri])
    return data, {k: sorted(v) for k, v in acl.items() if v}


@pytest.mark.parametrize("explicit", [True, False])
def test_every_object_of_a_batch_is_an_entry(make_kinto, explicit):
    server = make_kinto(explicit_permissions=str(explicit).lower())
    server.account("admin")
    alice = server.account("alice")
    # The writer named in the bucket's ACL, for explicit_permissions = false.
    server.put("/buckets/b", {"permissions": {"write": ["account:alice"]}}, user=alice, status=201)
    server.put("/buckets/b/collections/c", user=alice, status=201)
    before = server.journal().headers["ETag"].strip('"')
    requests = [
        {
            "method": "PUT",
            "path": f"/buckets/b/collections/c/records/r{i:02}",
            "body": {"data": {"n": i}, "permissions": {"read": [f"account:reader{i}"]}},
        }
        for i in range(50)
    ]
    server.batch(requests, user=alice)
    entries = server.journal(since=before).json["data"]
    assert [e["uri"] for e in entries] == [
        f"/buckets/b/collections/c/records/r{i:02}" for i in range(50)
    ]
    for i, entry in enumerate(entries):
        data, acl = stored(server, entry["uri"])
        assert entry["action"] == "create"
        assert entry["resource_name"] == "record"
        assert entry["data"] == data
        assert entry["permissions"] == acl
        assert entry["permissions"]["read"] == [f"account:reader{i}"]
        # With explicit permissions Kinto adds the writer; without, the ACL is as sent.
        assert ("write" in entry["permissions"]) is explicit
    stamps = [e["last_modified"] for e in entries]
    assert stamps == sorted(stamps) and len(set(stamps)) == 50


def test_members_buckets_and_default_buckets_with_full_permissions(server):
    alice = server.account("alice")
    bob = server.account("bob")
    server.put(
        "/buckets/private",
        {"data": {}, "permissions": {"read": ["account:bob"]}},
        user=alice,
        status=201,
    )
    server.put(
        "/buckets/private/groups/friends",
        {"data": {"members": ["account:bob"]}},
        user=alice,
        status=201,
    )
    server.put(
        "/buckets/private/collections/notes",
        {"data": {"x": 1}, "permissions": {"record:create": ["/buckets/private/groups/friends"]}},
        user=alice,
        status=201,
    )
    server.put(
        "/buckets/private/collections/notes/records/n1",
        {"data": {"t": "hi"}},
        user=bob,
        status=201,
    )
    # tandem's account is in no ACL: Kinto itself would show it nothing of these.
    server.get("/buckets/private", user="tandem", status=403)
    # The default bucket: bucket and collection created implicitly by the record's write.
    server.put(
        "/buckets/default/collections/tasks/records/t1",
        {"data": {"done": False}},
        user=alice,
        status=201,
    )
    default_id = server.get("/", user=alice).json["user"]["bucket"]

    entries = server.whole_journal()
    for uri in (
        "/buckets/private",
        "/buckets/private/groups/friends",
        "/buckets/private/collections/notes",
        "/buckets/private/collections/notes/records/n1",
        f"/buckets/{default_id}",
        f"/buckets/{default_id}/collections/tasks",
        f"/buckets/{default_id}/collections/tasks/records/t1",
    ):
        (entry,) = entries_for(entries, uri)
        data, acl = stored(server, uri)
        assert (entry["action"], entry["data"], entry["permissions"]) == ("create", data, acl), uri
    (bucket,) = entries_for(entries, "/buckets/private")
    assert bucket["permissions"] == {"read": ["account:bob"], "write": ["account:alice"]}
    (record,) = entries_for(entries, "/buckets/private/collections/notes/records/n1")
    assert record["permissions"] == {"write": ["account:bob"]}
    assert entries_for(entries, f"/buckets/{default_id}")[0]["permissions"] == {
        "write": ["account:alice"]
    }
    assert bob  # bob wrote through the group's record:create


def test_deleting_a_bucket_or_collection_is_one_entry(server):
    server.put("/buckets/b", user="admin", status=201)
    for c in ("c1", "c2"):
        server.put(f"/buckets/b/collections/{c}", user="admin", status=201)
        for r in range(3):
            server.put(f"/buckets/b/collections/{c}/records/r{r}", user="admin", status=201)
    server.put("/buckets/b/groups/g", {"data": {"members": []}}, user="admin", status=201)
    position = server.journal().headers["ETag"].strip('"')

    tombstone = server.delete("/buckets/b/collections/c1", user="admin", status=200).json["data"]
    (entry,) = server.journal(since=position).json["data"]
    assert entry["action"] == "delete"
    assert entry["resource_name"] == "collection"
    assert entry["uri"] == "/buckets/b/collections/c1"
    assert (
        entry["data"]
        == tombstone
        == {"id": "c1", "last_modified": tombstone["last_modified"], "deleted": True}
    )
    assert "permissions" not in entry

    server.delete("/buckets/b", user="admin", status=200)
    (entry,) = server.journal(since=entry["last_modified"]).json["data"]
    assert (entry["action"], entry["uri"], entry["data"]["deleted"]) == (
        "delete",
        "/buckets/b",
        True,
    )


def test_deleted_records_are_entries_with_their_tombstone(server):
    server.put("/buckets/b", user="admin")
    server.put("/buckets/b/collections/c", user="admin")
    for r in range(3):
        server.put(f"/buckets/b/collections/c/records/r{r}", user="admin", status=201)
    position = server.journal().headers["ETag"].strip('"')
    tombstones = server.delete("/buckets/b/collections/c/records", user="admin", status=200).json[
        "data"
    ]
    entries = server.journal(since=position).json["data"]
    assert sorted(e["uri"].rsplit("/", 1)[1] for e in entries) == ["r0", "r1", "r2"]
    assert sorted((e["data"] for e in entries), key=lambda d: d["id"]) == sorted(
        tombstones, key=lambda d: d["id"]
    )
    assert all(e["action"] == "delete" and "permissions" not in e for e in entries)


def test_one_object_changed_several_times_in_a_batch_ends_as_it_is(server):
    server.put("/buckets/b", user="admin")
    server.put("/buckets/b/collections/c", user="admin")
    position = server.journal().headers["ETag"].strip('"')
    path = "/buckets/b/collections/c/records/r"
    # Kinto merges the two creates into one event and the delete into another: the entries
    # must still end with what the record is.
    server.batch(
        [
            {"method": "PUT", "path": path, "body": {"data": {"v": 1}}},
            {"method": "DELETE", "path": path},
            {"method": "PUT", "path": path, "body": {"data": {"v": 3}}},
            {"method": "PUT", "path": path + "2", "body": {"data": {"v": 1}}},
            {"method": "DELETE", "path": path + "2"},
            # Recreated in the past: the create's last_modified is below the tombstone's.
            {
                "method": "PUT",
                "path": path + "2",
                "body": {"data": {"v": 3, "last_modified": 1000}},
            },
            {"method": "DELETE", "path": path + "2"},
        ]
    )
    entries = server.journal(since=position).json["data"]
    mine = entries_for(entries, path)
    assert [e["action"] for e in mine] == ["create", "delete", "create"]
    assert mine[-1]["data"] == server.get(path, user="admin").json["data"]
    second = entries_for(entries, path + "2")
    assert [e["action"] for e in second][-1] == "delete"
    assert len(second) == 4


def test_accounts_creation_and_password_change(server):
    position = server.journal().headers["ETag"].strip('"')
    server.account("alice", "first-pw")
    server.patch(
        "/accounts/alice",
        {"data": {"password": "second-pw"}},
        user=("alice", "first-pw"),
        status=200,
    )
    created, changed = server.journal(since=position).json["data"]
    assert (created["action"], created["resource_name"], created["uri"]) == (
        "create",
        "account",
        "/accounts/alice",
    )
    assert (changed["action"], changed["uri"]) == ("update", "/accounts/alice")
    assert created["permissions"] == changed["permissions"] == {"write": ["account:alice"]}
    assert bcrypt.checkpw(b"first-pw", created["data"]["password"].encode())
    assert bcrypt.checkpw(b"second-pw", changed["data"]["password"].encode())
    assert changed["data"] == server.storage.get(
        resource_name="account", parent_id="alice", object_id="alice"
    )
    server.delete("/accounts/alice", user=("alice", "second-pw"), status=200)
    (deleted,) = server.journal(since=changed["last_modified"]).json["data"]
    assert (deleted["action"], deleted["data"]["deleted"]) == ("delete", True)


def test_only_the_configured_principals_read_it(server):
    alice = server.account("alice")
    server.get("/tandem/journal", status=401)
    assert server.get("/tandem/journal", user=alice, status=403).json["errno"] == 121
    server.get("/tandem/journal", user=("tandem", "wrong"), status=401)
    server.get("/tandem/objects", user=alice, status=403)
    server.post("/tandem/restore", {"objects": []}, user=alice, status=403)
    server.post("/tandem/restore", {"objects": []}, status=401)


def test_etag_304_and_pages(server):
    server.put("/buckets/b", user="admin")
    server.put("/buckets/b/collections/c", user="admin")
    for r in range(7):
        server.put(f"/buckets/b/collections/c/records/r{r}", user="admin")
    whole = server.journal().json["data"]
    etag = server.journal().headers["ETag"]
    assert etag == f'"{whole[-1]["last_modified"]}"'
    server.journal(headers={"If-None-Match": etag}, status=304)
    server.journal(since=0, headers={"If-None-Match": '"12"'}, status=200)
    server.journal(headers={"If-None-Match": "12"}, status=400)

    pages = []
    response = server.journal(since=0, limit=3)
    while True:
        pages.append(response.json["data"])
        following = response.headers.get("Next-Page")
        if not following:
            break
        assert f"_since={pages[-1][-1]['last_modified']}" in following and "_limit=3" in following
        response = server.get(following, user="tandem", status=200)
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    assert [e for p in pages for e in p] == whole
    since = whole[5]["last_modified"]
    assert server.journal(since=since).json["data"] == whole[6:]
    assert server.journal(since=f'"{since}"').json["data"] == whole[6:]


def test_empty_journal_has_a_position(make_kinto):
    server = make_kinto(tandem__principals="system.Everyone")
    response = server.get("/tandem/journal", status=200)
    assert response.json == {"data": []}
    position = int(response.headers["ETag"].strip('"'))
    server.get("/tandem/journal", headers={"If-None-Match": f'"{position}"'}, status=304)
    server.put("/accounts/a", {"data": {"password": "x"}}, status=201)
    (entry,) = server.get("/tandem/journal", status=200).json["data"]
    assert entry["last_modified"] > position


@pytest.mark.parametrize(
    "query",
    [
        "_since=abc",
        "_since=-1",
        "_limit=0",
        "_limit=x",
        '_since="12',
        "_since=1.5",
        "_since=9007199254740992",
        "_since=" + "9" * 5000,
        "_since=%D9%A1%D9%A2",  # Arabic-Indic digits
    ],
)
def test_bad_parameters_are_400(server, query):
    response = server.get(f"/tandem/journal?{query}", user="tandem", status=400)
    assert response.json["errno"] == 107
    assert response.json["error"] == "Invalid parameters"
    assert response.json["details"][0]["location"] == "querystring"


def test_trimming_and_410(make_kinto):
    server = make_kinto(tandem__journal_max_entries=5)
    server.account("admin")
    server.account("tandem")
    server.put("/buckets/b", user="admin")
    server.put("/buckets/b/collections/c", user="admin")
    for r in range(6):
        server.put(f"/buckets/b/collections/c/records/r{r}", user="admin")
    kept = server.journal().json["data"]
    assert len(kept) == 5
    assert [e["uri"][-2:] for e in kept] == ["r1", "r2", "r3", "r4", "r5"]
    oldest = kept[0]["last_modified"]
    gone = server.journal(since=0, status=410).json
    floor = gone["details"]["floor"]
    assert gone["code"] == 410 and gone["errno"] == 999 and gone["error"] == "Gone"
    assert gone["message"]
    assert floor < oldest
    server.journal(since=floor - 1, status=410)
    # From the floor on, nothing is missing.
    assert server.journal(since=floor).json["data"] == kept
    assert server.journal(since=oldest).json["data"] == kept[1:]
    # The position is the newest entry's, trimming or not.
    assert server.journal().headers["ETag"] == f'"{kept[-1]["last_modified"]}"'


def test_settings_are_checked():
    from pyramid.exceptions import ConfigurationError

    from conftest import Kinto, kinto_settings

    for bad in (
        {"tandem__journal_max_entries": "-1"},
        {"tandem__restore_max_objects": "0"},
        {"tandem__restore_max_objects": "many"},
    ):
        with pytest.raises(ConfigurationError):
            Kinto("memory", None, kinto_settings("memory", None, **bad))

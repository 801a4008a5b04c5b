"""The restore endpoint's work: write objects exactly as a dump (or journal) recorded them.

Kinto's HTTP API cannot put a server back as it was: it adds the writer to every ACL it writes
(``explicit_permissions``), only keeps a client's ``last_modified`` under conditions, writes a
tombstone at a fresh timestamp unless the client's is newer than the object's, and hashes
whatever password it is given. Here the storage and permission backends are used directly,
so that data, timestamps, ACLs and password hashes are those of the source.

What Kinto does around a write and a restore must do too is done here by hand:

- a list's timestamp is initialized to the current time before its first write, as Kinto's
  ``Resource`` does on every request, so that the list's ETag is the time of the restore;
- a group's members get the group's principal (``kinto.views.groups`` does it on events);
- an account's cached password check is dropped (``kinto.plugins.accounts`` does it);
- the history plugin's entry is written by the history plugin's own listener;
- the journal entry is queued like any other change.

The backends assign a timestamp themselves when the one given equals the list's newest
(memory and the PostgreSQL trigger both bump it), and PostgreSQL refuses two objects of one
list at the same timestamp: an object whose ``last_modified`` is already taken in its list is
a conflict, never written elsewhere in time.
"""

from collections import defaultdict
from dataclasses import dataclass

from kinto.core.events import ResourceChanged
from kinto.core.storage import Filter
from kinto.core.storage.exceptions import ObjectNotFoundError
from kinto.core.utils import COMPARISON, hmac_digest

from . import journal, uris
from .dump import is_tombstone_shape


class Invalid(ValueError):
    """A malformed request: ``name`` is the offending part (``objects.3.data``)."""

    def __init__(self, name: str, description: str):
        super().__init__(f"{name}: {description}")
        self.name = name
        self.description = description


@dataclass
class Item:
    """One object to restore."""

    ref: uris.ObjectRef
    data: dict
    permissions: dict | None  # None: a tombstone

    @property
    def last_modified(self) -> int:
        return self.data["last_modified"]


#: Timestamps are kept within JSON's safe integers (PostgreSQL's timestamps reach further).
MAX_TIMESTAMP = 2**53 - 1


def parse(body, max_objects: int, postgresql: bool) -> list[Item]:
    """The items of a restore request body; :class:`Invalid` when anything is malformed
    (``postgresql``: also when a string holds U+0000, which PostgreSQL cannot store)."""
    if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
        raise Invalid("objects", "a list of objects is required")
    unknown = set(body) - {"objects"}
    if unknown:
        raise Invalid(sorted(unknown)[0], "unknown field")
    objects = body["objects"]
    if len(objects) > max_objects:
        raise Invalid("objects", f"at most {max_objects} objects per request")
    items = [_parse_item(f"objects.{i}", obj) for i, obj in enumerate(objects)]
    if postgresql:
        for i, item in enumerate(items):
            if _holds_nul(item.data):
                raise Invalid(f"objects.{i}.data", "holds U+0000, which PostgreSQL cannot store")
            if item.permissions and _holds_nul(item.permissions):
                raise Invalid(
                    f"objects.{i}.permissions", "holds U+0000, which PostgreSQL cannot store"
                )
    return items


def _holds_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _parse_item(name: str, obj) -> Item:
    if not isinstance(obj, dict):
        raise Invalid(name, "not an object")
    unknown = set(obj) - {"uri", "resource_name", "data", "permissions"}
    if unknown:
        raise Invalid(f"{name}.{sorted(unknown)[0]}", "unknown field")
    try:
        ref = uris.parse(obj.get("uri"))
    except ValueError as e:
        raise Invalid(f"{name}.uri", str(e)) from None
    if obj.get("resource_name") != ref.resource_name:
        raise Invalid(f"{name}.resource_name", f"must be {ref.resource_name!r} for this uri")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise Invalid(f"{name}.data", "an object is required")
    if data.get("id") != ref.id:
        raise Invalid(f"{name}.data.id", "must be the uri's last segment")
    stamp = data.get("last_modified")
    if not isinstance(stamp, int) or isinstance(stamp, bool) or abs(stamp) > MAX_TIMESTAMP:
        raise Invalid(f"{name}.data.last_modified", "an integer (milliseconds) is required")
    if "permissions" not in obj:
        if not is_tombstone_shape(data):
            raise Invalid(
                f"{name}.data",
                "without permissions, a tombstone is expected: {id, last_modified, deleted: true}",
            )
        return Item(ref, data, None)
    permissions = obj["permissions"]
    if not isinstance(permissions, dict):
        raise Invalid(f"{name}.permissions", "an object is required")
    allowed = uris.PERMISSIONS[ref.resource_name]
    for perm, principals in permissions.items():
        if perm not in allowed:
            raise Invalid(
                f"{name}.permissions.{perm}", f"not a permission of a {ref.resource_name}"
            )
        if not isinstance(principals, list) or not all(isinstance(p, str) for p in principals):
            raise Invalid(f"{name}.permissions.{perm}", "a list of principals is required")
    if ref.resource_name == "account" and not isinstance(data.get("password"), str):
        raise Invalid(f"{name}.data.password", "an account needs its password hash")
    if ref.resource_name == "group":
        members = data.get("members", [])
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise Invalid(f"{name}.data.members", "a list of principals is required")
    return Item(ref, data, permissions)


def check_parents(storage, items: list[Item]) -> None:
    """Every item's parent must be live: on the server already, or restored by an earlier
    item of the request (a tombstone never replaces a live object, so it cannot remove one)."""
    live: dict[str, bool] = {}
    for i, item in enumerate(items):
        parent_uri = item.ref.parent_uri
        if parent_uri is not None:
            if parent_uri not in live:
                live[parent_uri] = _is_live(storage, uris.parse(parent_uri))
            if not live[parent_uri]:
                raise Invalid(
                    f"objects.{i}.uri", f"{parent_uri} is not on the server nor restored before"
                )
        if item.permissions is not None:
            live[item.ref.uri] = True


class Restore:
    """Writes the items of one request (all in the request's transaction).

    What each list holds at the ids and timestamps of the request is read once per list
    (two or three queries whatever the number of items), then kept up to date here as items
    are written, so that an item sees the ones before it."""

    def __init__(self, request):
        self.request = request
        self.storage = request.registry.storage
        self.permission = request.registry.permission
        self.history = "history" in request.registry.api_capabilities
        #: (list, id) -> ("live" | "tombstone", object), for the ids of the request.
        self.states: dict[tuple, tuple[str, dict]] = {}
        #: (list, timestamp) -> ids of the objects at that timestamp, for the request's.
        self.holders: dict[tuple, set[str]] = defaultdict(set)
        #: List timestamps, once initialized by this request, as the backends move them.
        self.list_timestamps: dict[tuple[str, str], int] = {}

    def run(self, items: list[Item]) -> list[dict]:
        """Writes what must be, and answers one result per item."""
        self._read_lists(items)
        return [self._one(item) for item in items]

    def _read_lists(self, items: list[Item]) -> None:
        by_list = defaultdict(list)
        for item in items:
            by_list[item.ref.list_key].append(item)
        accounts = []
        for key in [k for k in by_list if k[0] == "account"]:
            accounts.extend(item.ref.id for item in by_list.pop(key))
        size = self.request.registry.tandem.page_max
        for ids in journal.pieces(list(dict.fromkeys(accounts)), size):
            # Each account is a list of its own (see ``uris``): look them all up at once.
            for state, obj in _states(self.storage, "account", "*", ids):
                self.states[(("account", obj["id"]), obj["id"])] = (state, obj)
        for key, listed in by_list.items():
            resource_name, parent_id = key
            for ids in journal.pieces(list(dict.fromkeys(item.ref.id for item in listed)), size):
                for state, obj in _states(self.storage, resource_name, parent_id, ids):
                    self.states[(key, obj["id"])] = (state, obj)
            # 0 is where tombstones are staged (see ``_write_tombstone``).
            stamps = sorted({item.last_modified for item in listed} | {0})
            for some in journal.pieces(stamps, size):
                for obj in self.storage.list_all(
                    resource_name=resource_name,
                    parent_id=parent_id,
                    filters=[Filter("last_modified", some, COMPARISON.IN)],
                    include_deleted=True,
                ):
                    self.holders[(key, obj["last_modified"])].add(obj["id"])

    def _one(self, item: Item) -> dict:
        ref = item.ref
        result = {"uri": ref.uri}
        state, existing = self.states.get((ref.list_key, ref.id), (None, None))
        if state == "live":
            if item.permissions is not None and existing["last_modified"] == item.last_modified:
                return {**result, "status": "unchanged"}
            return {
                **result,
                "status": "conflict",
                "existing_last_modified": existing["last_modified"],
            }
        if (
            item.permissions is None
            and state == "tombstone"
            and existing["last_modified"] == item.last_modified
        ):
            return {**result, "status": "unchanged"}
        self._initialize_list(ref)
        if self._timestamp_taken(ref, item.last_modified):
            return {**result, "status": "conflict"}
        if item.permissions is None:
            self._write_tombstone(item)
        else:
            self._write_live(item)
        return {**result, "status": "created"}

    def _initialize_list(self, ref: uris.ObjectRef) -> None:
        if ref.list_key not in self.list_timestamps:
            self.list_timestamps[ref.list_key] = self.storage.resource_timestamp(
                resource_name=ref.resource_name, parent_id=ref.parent_id
            )

    def _timestamp_taken(self, ref: uris.ObjectRef, stamp: int) -> bool:
        """Whether writing at ``stamp`` would be refused (another object of the list has it)
        or moved by the backend (it is the list's current timestamp)."""
        if stamp == self.list_timestamps[ref.list_key]:
            return True
        return bool(self.holders[(ref.list_key, stamp)] - {ref.id})

    def _stored(self, ref: uris.ObjectRef, state: str, stored: dict, wanted: int) -> None:
        """Notes what was written, after checking the backend kept its timestamp."""
        if stored["last_modified"] != wanted:
            # Cannot happen after ``_timestamp_taken`` unless someone wrote into the list
            # meanwhile; never let a restore re-time an object silently.
            raise RuntimeError(
                f"{ref.uri} was stored at {stored['last_modified']} instead of {wanted}"
            )
        key = ref.list_key
        self.list_timestamps[key] = max(self.list_timestamps[key], wanted)
        before = self.states.get((key, ref.id))
        if before is not None:
            self.holders[(key, before[1]["last_modified"])].discard(ref.id)
        self.states[(key, ref.id)] = (state, stored)
        self.holders[(key, wanted)].add(ref.id)

    def _write_live(self, item: Item) -> None:
        ref = item.ref
        # Over a tombstone, ``create`` replaces it (both backends); the data keeps its
        # ``last_modified``, which the backends keep unless it is the list's newest.
        stored = self.storage.create(
            resource_name=ref.resource_name, parent_id=ref.parent_id, obj=item.data
        )
        self._stored(ref, "live", stored, item.last_modified)
        permissions = self._replace_permissions(ref, item.permissions)
        if ref.resource_name == "group":
            for member in stored.get("members", []):
                self.permission.add_user_principal(member, ref.uri)
        self._written(ref, "create", stored, permissions)

    def _write_tombstone(self, item: Item) -> None:
        ref = item.ref
        # Neither backend writes a tombstone by itself: create a placeholder at a timestamp
        # that moves nothing (0, or the oldest free one: below the list's timestamp and
        # taken by no other object), then delete it at the tombstone's timestamp, which both
        # backends keep when it is not the list's newest. A tombstone already there is
        # replaced by the placeholder.
        staged = 0
        while self.holders[(ref.list_key, staged)] - {ref.id}:
            staged += 1
            self._read_holders(ref, staged)
        self.storage.create(
            resource_name=ref.resource_name,
            parent_id=ref.parent_id,
            obj={"id": ref.id, "last_modified": staged},
        )
        tombstone = self.storage.delete(
            resource_name=ref.resource_name,
            parent_id=ref.parent_id,
            object_id=ref.id,
            last_modified=item.last_modified,
        )
        self._stored(ref, "tombstone", tombstone, item.last_modified)
        self._replace_permissions(ref, {})
        if ref.resource_name == "group":
            self.permission.remove_principal(ref.uri)
        self._written(ref, "delete", tombstone, None)

    def _read_holders(self, ref: uris.ObjectRef, stamp: int) -> None:
        key = (ref.list_key, stamp)
        self.holders[key] = {
            obj["id"]
            for obj in self.storage.list_all(
                resource_name=ref.resource_name,
                parent_id=ref.parent_id,
                filters=[Filter("last_modified", stamp, COMPARISON.EQ)],
                include_deleted=True,
            )
        }

    def _replace_permissions(self, ref: uris.ObjectRef, permissions: dict) -> dict:
        """Sets the object's ACL to ``permissions`` exactly: every permission its kind can
        carry is named, the ones not given emptied (no read of the current ACL needed)."""
        wanted = {
            perm: list(dict.fromkeys(permissions.get(perm, [])))
            for perm in uris.PERMISSIONS[ref.resource_name]
        }
        self.permission.replace_object_permissions(ref.uri, wanted)
        return journal.normalize_permissions(wanted)

    def _written(
        self, ref: uris.ObjectRef, action: str, stored: dict, permissions: dict | None
    ) -> None:
        journal.queue(self.request, ref, action, stored, permissions)
        if ref.resource_name == "account":
            self._forget_password_check(ref.id)
        elif self.history:
            self._record_history(ref, action, stored)

    def _forget_password_check(self, account_id: str) -> None:
        from kinto.plugins.accounts import ACCOUNT_CACHE_KEY

        settings = self.request.registry.settings
        key = hmac_digest(settings["userid_hmac_secret"], ACCOUNT_CACHE_KEY.format(account_id))
        self.request.registry.cache.delete(key)

    def _record_history(self, ref: uris.ObjectRef, action: str, stored: dict) -> None:
        """The entry the history plugin writes for this change, by the history plugin: the
        event carries what a request on the object's own URL would (its route's ids), one
        object per event (the plugin stops after the first object of an event when
        ``explicit_permissions`` is off)."""
        from kinto.plugins.history.listener import on_resource_changed

        payload = {
            "timestamp": stored["last_modified"],
            "action": action,
            "uri": ref.uri,
            "user_id": self.request.prefixed_userid,
            "resource_name": ref.resource_name,
            f"{ref.resource_name}_id": ref.id,
        }
        if ref.bucket_id is not None:
            payload["bucket_id"] = ref.bucket_id
        if ref.collection_id is not None:
            payload["collection_id"] = ref.collection_id
        on_resource_changed(ResourceChanged(payload, [{"new": stored}], self.request))


def _states(storage, resource_name: str, parent_id: str, ids: list[str]):
    """``(state, object)`` for the objects of the list at ``ids``, live or tombstoned (two
    queries: a live object may hold exactly what a tombstone does)."""
    live = storage.list_all(
        resource_name=resource_name,
        parent_id=parent_id,
        filters=[Filter("id", ids, COMPARISON.IN)],
    )
    live_ids = {obj["id"] for obj in live}
    for obj in live:
        yield "live", obj
    for obj in storage.list_all(
        resource_name=resource_name,
        parent_id=parent_id,
        filters=[Filter("id", ids, COMPARISON.IN)],
        include_deleted=True,
    ):
        if obj["id"] not in live_ids:
            yield "tombstone", obj


def _is_live(storage, ref: uris.ObjectRef) -> bool:
    try:
        storage.get(resource_name=ref.resource_name, parent_id=ref.parent_id, object_id=ref.id)
    except ObjectNotFoundError:
        return False
    return True

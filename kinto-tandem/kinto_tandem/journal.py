"""The journal: one server-wide list of every change, in one total order.

Kinto keeps a timestamp per list (per collection for its records), not per server, and its
history plugin is per bucket, readable only by those the bucket's ACL names. A follower of a
whole server needs one list of every change, ordered, with each object's data and complete
permissions: this module keeps it.

How an entry is written:

- :func:`on_resource_changed` (a ``ResourceChanged`` subscriber) queues one entry per impacted
  object. Kinto merges a batch's changes into one event per (resource, parent, action), so
  every object of ``event.impacted_objects`` is queued, never only the first.
- :func:`tween_factory` writes what was queued once the request's events have all been
  notified, still inside the request's transaction (``ResourceChanged`` is notified before
  commit, which the history plugin relies on too). Writing at the end rather than per event
  lets the entries of one object keep the order of its changes (Kinto's merged events lose
  it) and lets permissions be read once, as the request left them.
- Entries are objects of the storage backend (resource ``tandem-journal``, parent
  :data:`PARENT_ID`), so PostgreSQL needs no migration. Their ``last_modified``, assigned by
  the backend at insert, is the journal's cursor: strictly increasing within one list.
- On PostgreSQL two transactions can insert entries concurrently and commit in the other
  order; a reader that moved past the later timestamp would never see the earlier entry (and
  two inserts in the same millisecond collide on Kinto's unique index: a 409 for a writer).
  A transaction-scoped advisory lock, taken right before inserting, serializes journal
  writers until commit, so entries become visible in the order of their ``last_modified``.

Trimming keeps at most ``kinto.tandem.journal_max_entries`` entries and records the newest
trimmed timestamp (the *floor*): a reader whose cursor is below it missed entries (``410``).
"""

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from kinto.core.events import ResourceChanged
from kinto.core.storage import Filter, Sort
from kinto.core.storage.exceptions import ObjectNotFoundError
from kinto.core.utils import COMPARISON

from . import uris


logger = logging.getLogger(__name__)

#: Storage resource of the journal's entries.
RESOURCE_NAME = "tandem-journal"
#: Storage resource of the floor (one object, :data:`FLOOR_ID`).
FLOOR_RESOURCE_NAME = "tandem-journal-floor"
FLOOR_ID = "floor"
#: The parent of both: no Kinto object URI, so no cascading delete of Kinto's ever matches it.
PARENT_ID = "__tandem__"

#: The ``pg_advisory_xact_lock`` key serializing journal writers ("tandem" in ASCII).
LOCK_KEY = 0x74616E64656D

#: The permissions an object of each kind can carry (the ``permissions`` of Kinto's resource
#: classes; the schema of every object's ``permissions`` accepts these only).
OBJECT_PERMISSIONS = {
    "bucket": ("read", "write", "collection:create", "group:create"),
    "collection": ("read", "write", "record:create"),
}
#: Those of groups, records and accounts.
DEFAULT_PERMISSIONS = ("read", "write")

#: Where a request (and the subrequests of its batch) queues its entries.
PENDING_KEY = "tandem.journal.pending"

#: Most entries removed by one trimming pass (the rest go at the next one), so that lowering
#: ``journal_max_entries`` on a big journal does not make one request delete a million rows.
TRIM_CHUNK = 10000


@dataclass
class Pending:
    """An entry waiting for the end of its request."""

    ref: uris.ObjectRef
    action: str
    data: dict
    permissions: dict | None = field(default=None)


def queue(
    request, ref: uris.ObjectRef, action: str, data: dict, permissions: dict | None = None
) -> None:
    """Queues an entry for ``ref`` (written when the request's events are done); the object's
    permissions are read then, unless given."""
    request.bound_data.setdefault(PENDING_KEY, []).append(Pending(ref, action, data, permissions))


def on_resource_changed(event: ResourceChanged) -> None:
    """Queues one entry per object the event impacted."""
    payload = event.payload
    resource_name = payload["resource_name"]
    action = payload["action"]
    for impacted in event.impacted_objects:
        new = impacted["new"]
        ref = uris.from_event(resource_name, payload, new["id"])
        queue(event.request, ref, action, new)


def tween_factory(handler, registry):
    """Writes the entries a request queued, after its ``ResourceChanged`` events were notified
    (this tween wraps Kinto's, under ``EXCVIEW`` and so inside ``pyramid_tm``'s transaction).
    A request that fails writes none: its changes are rolled back with them."""

    def tween(request):
        response = handler(request)
        pending = request.bound_data.pop(PENDING_KEY, None)
        if pending:
            write(request, pending)
        return response

    return tween


def write(request, pending: list[Pending]) -> None:
    """Writes the queued entries of one request into the journal, then trims it if due."""
    registry = request.registry
    storage = registry.storage
    entries = _in_object_order(storage, pending)
    if is_postgresql(storage):
        _refresh_data(storage, entries, registry.tandem.page_max)
    unknown = [e for e in entries if e.action != "delete" and e.permissions is None]
    if unknown:
        acls = object_acls(registry.permission, [e.ref for e in unknown])
        for entry in unknown:
            entry.permissions = acls[entry.ref.uri]

    lock(storage)
    for entry in entries:
        obj = {
            "action": entry.action,
            "resource_name": entry.ref.resource_name,
            "uri": entry.ref.uri,
            "data": entry.data,
        }
        if entry.permissions is not None:
            obj["permissions"] = entry.permissions
        storage.create(resource_name=RESOURCE_NAME, parent_id=PARENT_ID, obj=obj)
    _maybe_trim(registry, len(entries))


def object_acls(permission, refs: list[uris.ObjectRef]) -> dict[str, dict]:
    """The complete ACL of each object, by URI, normalized (:func:`normalize_permissions`).

    Asked by permission name: without names the memory backend scans every key it holds for
    each object, which made a write cost as much as the number of objects on the server. Its
    ``get_objects_permissions`` fails on a name an object lacks, so there each principal set is
    looked up alone; other backends answer one query per kind of object."""
    by_kind = defaultdict(dict)
    for ref in refs:
        by_kind[ref.resource_name][ref.uri] = None
    memory = type(permission).__module__.startswith("kinto.core.permission.memory")
    acls = {}
    for kind, kind_uris in by_kind.items():
        names = OBJECT_PERMISSIONS.get(kind, DEFAULT_PERMISSIONS)
        if memory:
            found = [
                {name: permission.get_object_permission_principals(uri, name) for name in names}
                for uri in kind_uris
            ]
        else:
            found = permission.get_objects_permissions(list(kind_uris), list(names))
        acls.update((uri, normalize_permissions(acl)) for uri, acl in zip(kind_uris, found))
    return acls


def normalize_permissions(acl: dict) -> dict:
    """An ACL from the permission backend as JSON: sorted principals, no empty permission."""
    return {perm: sorted(principals) for perm, principals in sorted(acl.items()) if principals}


def lock(storage) -> None:
    """Serializes journal writers until the current transaction ends (PostgreSQL only: the
    memory backend has no transactions, each write is visible at once)."""
    if not is_postgresql(storage):
        return
    from kinto.core.utils import sqlalchemy as sa

    # ``connect()`` hands out the request's session (a thread-local session joined to the
    # request's zope transaction), so the lock is held until that transaction commits.
    with storage.client.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


def position(storage) -> int:
    """The journal's position: the ``last_modified`` of its newest entry, or the time it was
    first touched while empty (the backend's list timestamp, which trimming never moves)."""
    return storage.resource_timestamp(resource_name=RESOURCE_NAME, parent_id=PARENT_ID)


def floor(storage) -> int:
    """The newest trimmed entry's ``last_modified`` (0 while nothing was trimmed)."""
    try:
        stored = storage.get(
            resource_name=FLOOR_RESOURCE_NAME, parent_id=PARENT_ID, object_id=FLOOR_ID
        )
    except ObjectNotFoundError:
        return 0
    return int(stored["floor"])


def read(storage, since: int | None, limit: int) -> tuple[list[dict], bool]:
    """Up to ``limit`` entries after ``since``, oldest first, and whether more follow."""
    filters = [] if since is None else [Filter("last_modified", since, COMPARISON.GT)]
    found = storage.list_all(
        resource_name=RESOURCE_NAME,
        parent_id=PARENT_ID,
        filters=filters,
        sorting=[Sort("last_modified", 1)],
        limit=limit + 1,
    )
    entries = []
    for obj in found[:limit]:
        entry = {"last_modified": obj["last_modified"]}
        entry.update(
            (k, obj[k])
            for k in ("action", "resource_name", "uri", "data", "permissions")
            if k in obj
        )
        entries.append(entry)
    return entries, len(found) > limit


def is_postgresql(storage) -> bool:
    """Whether ``storage`` is Kinto's PostgreSQL backend (transactions, jsonb, unique
    timestamps per list) rather than the memory one."""
    return type(storage).__module__.startswith("kinto.core.storage.postgresql")


def _in_object_order(storage, pending: list[Pending]) -> list[Pending]:
    """The entries of a request in the order Kinto's events gave them, except that the entries
    of one object (changed several times by one batch, in events Kinto merged per action) are
    put in the order of its changes: by ``last_modified``, and the one matching what the
    object is now (live or deleted) last, since clients may force a past ``last_modified``."""
    slots = defaultdict(list)
    for i, entry in enumerate(pending):
        slots[entry.ref.uri].append(i)
    ordered = list(pending)
    for indexes in slots.values():
        if len(indexes) < 2:
            continue
        mine = sorted((pending[i] for i in indexes), key=lambda e: e.data.get("last_modified", 0))
        ref = mine[0].ref
        try:
            now = storage.get(
                resource_name=ref.resource_name, parent_id=ref.parent_id, object_id=ref.id
            )
            final = [
                e
                for e in mine
                if e.action != "delete" and e.data.get("last_modified") == now["last_modified"]
            ]
        except ObjectNotFoundError:
            final = [e for e in mine if e.action == "delete"]
        if final:
            mine.remove(final[-1])
            mine.append(final[-1])
        for i, entry in zip(indexes, mine):
            ordered[i] = entry
    return ordered


def pieces(items: list, size: int):
    """``items`` in lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _refresh_data(storage, entries: list[Pending], size: int) -> None:
    """Replaces the data of created and updated objects by what PostgreSQL stored, where it is
    still the same version: ``jsonb`` keeps numbers as ``numeric``, so what Kinto serves back
    can differ from what was sent (``1e308`` comes back as a 309-digit integer)."""
    by_list = defaultdict(dict)
    for entry in entries:
        if entry.action != "delete":
            by_list[entry.ref.list_key].setdefault(entry.ref.id, []).append(entry)
    for (resource_name, parent_id), by_id in by_list.items():
        for ids in pieces(list(by_id), size):
            stored = storage.list_all(
                resource_name=resource_name,
                parent_id=parent_id,
                filters=[Filter("id", ids, COMPARISON.IN)],
            )
            for obj in stored:
                for entry in by_id[obj["id"]]:
                    if entry.data.get("last_modified") == obj["last_modified"]:
                        entry.data = obj


class TrimSchedule:
    """Counts entries written by this process, to trim every 1% of ``max_entries`` of them
    (at least 1, at most 1000): counting a journal of a million entries at every write would
    cost more than the write."""

    def __init__(self, max_entries: int):
        self.interval = max(1, min(1000, max_entries // 100))
        self.written = 0
        self.mutex = threading.Lock()

    def due(self, written: int) -> bool:
        with self.mutex:
            self.written += written
            if self.written < self.interval:
                return False
            self.written = 0
            return True


def _maybe_trim(registry, written: int) -> None:
    max_entries = registry.tandem.journal_max_entries
    if max_entries == 0 or not registry.tandem.trim_schedule.due(written):
        return
    storage = registry.storage
    excess = storage.count_all(resource_name=RESOURCE_NAME, parent_id=PARENT_ID) - max_entries
    if excess <= 0:
        return
    oldest = storage.list_all(
        resource_name=RESOURCE_NAME,
        parent_id=PARENT_ID,
        sorting=[Sort("last_modified", 1)],
        limit=min(excess, TRIM_CHUNK),
    )
    for entry in oldest:
        # Deleting with the entry's own (past) timestamp leaves the memory backend's list
        # timestamp, the journal's position, where it is; no tombstone is kept.
        storage.delete(
            resource_name=RESOURCE_NAME,
            parent_id=PARENT_ID,
            object_id=entry["id"],
            with_deleted=False,
            last_modified=entry["last_modified"],
        )
    new_floor = oldest[-1]["last_modified"]
    storage.update(
        resource_name=FLOOR_RESOURCE_NAME,
        parent_id=PARENT_ID,
        object_id=FLOOR_ID,
        obj={"floor": new_floor},
    )
    logger.info("tandem journal trimmed: %d entries, floor %d", len(oldest), new_floor)

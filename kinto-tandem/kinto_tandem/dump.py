"""The objects dump: every object of the server, in a fixed order that a reader can resume.

A follower starting from nothing (or from a cursor the journal no longer covers) needs the
whole state once: every account, bucket, group, collection and record, whoever owns it, with
its permissions, and the tombstones Kinto keeps for records (clients syncing against a replica
need them). Kinto's own API shows each principal only what it may read and hides ACLs from
anyone not in an object's ``write`` list; the storage backend hides nothing.

The order is that of the URIs' segments: accounts first, then each bucket followed by its
collections (each followed by its records), then its groups. Every list is read sorted by id
with a ``>`` filter on the last id seen, so a page costs a few indexed queries whatever the
size of the server, and ``_after=<uri>`` resumes anywhere, even after that object is gone.
"""

from collections.abc import Iterator

from kinto.core.storage import Filter, Sort
from kinto.core.utils import COMPARISON

from . import uris


def is_tombstone_shape(obj: dict) -> bool:
    """Whether ``obj`` looks like a tombstone (a live record may hold ``deleted: true`` too)."""
    return obj.get("deleted") is True and set(obj) == {"id", "last_modified", "deleted"}


def walk(
    storage, after: uris.ObjectRef | None, chunk: int
) -> Iterator[tuple[uris.ObjectRef, dict, bool]]:
    """Every object after ``after`` (from the start if ``None``), in dump order, as
    ``(ref, data, is_tombstone)``; lists are read ``chunk`` objects at a time."""
    segments = tuple(after.uri[1:].split("/")) if after else ()
    if not segments or segments[0] == "accounts":
        start = segments[1] if segments else None
        # Each account is its own parent (see ``uris``): list them all with the wildcard.
        for obj in _sorted_by_id(storage, "account", "*", start, False, chunk):
            yield uris.ObjectRef("account", obj["id"]), obj, False
        segments = ()
    start = segments[1] if segments else None
    rest = segments[2:]
    for bucket in _sorted_by_id(storage, "bucket", "", start, bool(segments), chunk):
        bucket_id = bucket["id"]
        if segments and bucket_id == start:
            # Already listed: resume among its children.
            yield from _bucket_children(storage, bucket_id, rest, chunk)
            continue
        yield uris.ObjectRef("bucket", bucket_id), bucket, False
        yield from _bucket_children(storage, bucket_id, (), chunk)


def _bucket_children(storage, bucket_id: str, rest: tuple, chunk: int):
    parent_id = f"/buckets/{bucket_id}"
    if not rest or rest[0] == "collections":
        start = rest[1] if rest else None
        for collection in _sorted_by_id(
            storage, "collection", parent_id, start, bool(rest), chunk
        ):
            collection_id = collection["id"]
            if rest and collection_id == start:
                yield from _records(storage, bucket_id, collection_id, rest[2:], chunk)
                continue
            yield (
                uris.ObjectRef("collection", collection_id, bucket_id, collection_id),
                collection,
                False,
            )
            yield from _records(storage, bucket_id, collection_id, (), chunk)
    start = rest[1] if rest and rest[0] == "groups" else None
    for group in _sorted_by_id(storage, "group", parent_id, start, False, chunk):
        yield uris.ObjectRef("group", group["id"], bucket_id), group, False


def _records(storage, bucket_id: str, collection_id: str, rest: tuple, chunk: int):
    parent_id = f"/buckets/{bucket_id}/collections/{collection_id}"
    start = rest[1] if rest else None
    for batch in _chunks(storage, "record", parent_id, start, False, chunk, include_deleted=True):
        # Tombstones are listed with the live records; a live record whose only field is
        # ``deleted: true`` looks the same, so those are looked up among the live ones.
        lookalikes = [obj["id"] for obj in batch if is_tombstone_shape(obj)]
        live = set()
        if lookalikes:
            live = {
                obj["id"]
                for obj in storage.list_all(
                    resource_name="record",
                    parent_id=parent_id,
                    filters=[Filter("id", lookalikes, COMPARISON.IN)],
                )
            }
        for obj in batch:
            tombstone = is_tombstone_shape(obj) and obj["id"] not in live
            yield uris.ObjectRef("record", obj["id"], bucket_id, collection_id), obj, tombstone


def _sorted_by_id(storage, resource_name, parent_id, start, inclusive, chunk):
    for batch in _chunks(storage, resource_name, parent_id, start, inclusive, chunk):
        yield from batch


def _chunks(storage, resource_name, parent_id, start, inclusive, chunk, include_deleted=False):
    """The list's objects with ids after ``start`` (or from it, if ``inclusive``), sorted by
    id, ``chunk`` at a time."""
    operator = COMPARISON.MIN if inclusive else COMPARISON.GT
    while True:
        filters = [] if start is None else [Filter("id", start, operator)]
        batch = storage.list_all(
            resource_name=resource_name,
            parent_id=parent_id,
            filters=filters,
            sorting=[Sort("id", 1)],
            limit=chunk,
            include_deleted=include_deleted,
        )
        if batch:
            yield batch
        if len(batch) < chunk:
            return
        start, operator = batch[-1]["id"], COMPARISON.GT

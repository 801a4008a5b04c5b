"""Object URIs, and where each kind of object lives in Kinto's backends.

Kinto names an object by its URI (``/buckets/b/collections/c``) in the permission backend and
in its events, but by ``(resource_name, parent_id, id)`` in the storage backend. The journal,
the dump and the restore endpoint all speak URIs, so this module is the one place that turns
one into the other, for the five kinds tandem copies. It knows nothing of requests.

Accounts are the odd kind: the accounts plugin stores ``/accounts/{id}`` under resource name
``account`` with the account's own id as ``parent_id`` (so that a user lists only their own
account), not under a common parent.
"""

import re
from dataclasses import dataclass


#: Kinto's ids for buckets, collections, groups and records (``NameGenerator`` and
#: ``RelaxedUUID`` in ``kinto.views``).
OBJECT_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$")
#: The accounts plugin also accepts ``.``, ``@`` and ``+`` (e-mail addresses).
ACCOUNT_ID = re.compile(r"^[a-zA-Z0-9][+.@a-zA-Z0-9_-]*$")

#: The permissions an object of each kind can carry (Kinto's inheritance tree, without the
#: ``read:attributes`` Kinto derives and never stores).
PERMISSIONS = {
    "account": ("read", "write"),
    "bucket": ("read", "write", "collection:create", "group:create"),
    "collection": ("read", "write", "record:create"),
    "group": ("read", "write"),
    "record": ("read", "write"),
}

RESOURCE_NAMES = tuple(PERMISSIONS)


@dataclass(frozen=True)
class ObjectRef:
    """One object: its URI and its place in the storage backend."""

    resource_name: str
    id: str
    bucket_id: str | None = None
    collection_id: str | None = None

    @property
    def uri(self) -> str:
        """The object's URI, without the ``/v1`` prefix (the permission backend's key)."""
        if self.resource_name == "account":
            return f"/accounts/{self.id}"
        if self.resource_name == "bucket":
            return f"/buckets/{self.id}"
        if self.resource_name == "record":
            return f"/buckets/{self.bucket_id}/collections/{self.collection_id}/records/{self.id}"
        return f"/buckets/{self.bucket_id}/{self.resource_name}s/{self.id}"

    @property
    def parent_id(self) -> str:
        """The storage backend's ``parent_id`` of the list holding the object."""
        if self.resource_name == "account":
            return self.id
        if self.resource_name == "bucket":
            return ""
        if self.resource_name == "record":
            return f"/buckets/{self.bucket_id}/collections/{self.collection_id}"
        return f"/buckets/{self.bucket_id}"

    @property
    def parent_uri(self) -> str | None:
        """The URI of the object that must exist for this one to (``None``: top level)."""
        if self.resource_name in ("account", "bucket"):
            return None
        return self.parent_id

    @property
    def list_key(self) -> tuple[str, str]:
        """The storage list (``resource_name``, ``parent_id``) the object is in."""
        return (self.resource_name, self.parent_id)


def parse(uri: str) -> ObjectRef:
    """The object at ``uri``; :class:`ValueError` (with a description) when it is none."""
    if not isinstance(uri, str) or not uri.startswith("/"):
        raise ValueError("not the URI of an account, bucket, group, collection or record")
    segments = uri[1:].split("/")
    match segments:
        case ["accounts", account_id]:
            ref = ObjectRef("account", account_id)
        case ["buckets", bucket_id]:
            ref = ObjectRef("bucket", bucket_id)
        case ["buckets", bucket_id, "collections", collection_id]:
            ref = ObjectRef("collection", collection_id, bucket_id, collection_id)
        case ["buckets", bucket_id, "groups", group_id]:
            ref = ObjectRef("group", group_id, bucket_id)
        case ["buckets", bucket_id, "collections", collection_id, "records", record_id]:
            ref = ObjectRef("record", record_id, bucket_id, collection_id)
        case _:
            raise ValueError("not the URI of an account, bucket, group, collection or record")
    *parent_ids, own_id = segments[1::2]
    own = ACCOUNT_ID if ref.resource_name == "account" else OBJECT_ID
    if not own.fullmatch(own_id) or not all(OBJECT_ID.fullmatch(i) for i in parent_ids):
        raise ValueError("invalid object id")
    return ref


def from_event(resource_name: str, payload: dict, object_id: str) -> ObjectRef:
    """The object of a ``ResourceChanged`` event: its parents' ids are in the payload (taken
    from the route of the request that changed it), its own id in the impacted object."""
    bucket_id = payload.get("bucket_id") if resource_name not in ("account", "bucket") else None
    collection_id = payload.get("collection_id") if resource_name == "record" else None
    if resource_name == "collection":
        collection_id = object_id
    return ObjectRef(resource_name, object_id, bucket_id, collection_id)

"""The HTTP endpoints: ``/tandem/journal``, ``/tandem/objects`` and ``/tandem/restore``.

They show and write everything, whoever owns it, so they answer only the principals named in
``kinto.tandem.principals``; Kinto's ACLs do not apply (the objects they serve carry none of
their own). The views parse, authorize and call :mod:`.journal`, :mod:`.dump` and
:mod:`.restore`; errors have Kinto's JSON shape (``kinto.core.errors``).
"""

from kinto.core import Service
from kinto.core.errors import ERRORS, http_error, raise_invalid
from pyramid import httpexceptions
from pyramid.security import NO_PERMISSION_REQUIRED

from . import dump, journal, restore, uris


journal_service = Service(
    name="tandem-journal",
    path="/tandem/journal",
    description="Every change of the server, in one order",
)
objects_service = Service(
    name="tandem-objects",
    path="/tandem/objects",
    description="Every object of the server",
)
restore_service = Service(
    name="tandem-restore",
    path="/tandem/restore",
    description="Write objects with their recorded timestamps and permissions",
)


def authorize(request) -> None:
    """Lets through the principals of ``kinto.tandem.principals``: others get ``403``, and
    anonymous requests ``401`` (Kinto's forbidden view tells them apart)."""
    allowed = request.registry.tandem.principals
    if not allowed.intersection(request.prefixed_principals):
        raise httpexceptions.HTTPForbidden()


def _int_param(request, name: str, minimum: int) -> int | None:
    raw = request.GET.get(name)
    if raw is None:
        return None
    text = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    # Timestamps are milliseconds within JSON's safe integers (which PostgreSQL's timestamps
    # hold); the length check keeps int() from parsing a megabyte of digits.
    if not (text.isascii() and text.isdigit() and len(text) <= 16) or not (
        minimum <= int(text) <= restore.MAX_TIMESTAMP
    ):
        raise_invalid(
            request,
            location="querystring",
            name=name,
            description=f'"{raw[:40]}" is not an integer from {minimum} to 2^53 - 1',
        )
    return int(text)


def _limit(request) -> int:
    limit = _int_param(request, "_limit", 1)
    page_max = request.registry.tandem.page_max
    return page_max if limit is None else min(limit, page_max)


def _set_etag(request, position: int) -> None:
    request.response.headers["ETag"] = f'"{position}"'


def _not_modified(request, position: int) -> bool:
    """Whether ``If-None-Match`` names the current position (Kinto's format: a quoted
    integer, or ``*``)."""
    header = request.headers.get("If-None-Match")
    if header is None:
        return False
    header = header.strip()
    if header == "*":
        return True
    if not (len(header) > 2 and header[0] == header[-1] == '"' and header[1:-1].isdigit()):
        raise_invalid(
            request,
            location="header",
            name="If-None-Match",
            description="Invalid value for If-None-Match",
        )
    return header[1:-1].lstrip("0") == str(position)


def _next_page(request, service: Service, **params) -> str:
    query = {**request.GET, **{k: str(v) for k, v in params.items()}}
    return request.route_url(service.name, _query=query)


@journal_service.get(permission=NO_PERMISSION_REQUIRED)
def get_journal(request):
    """``?_since=T&_limit=N``: the entries after ``T``, oldest first."""
    authorize(request)
    since = _int_param(request, "_since", 0)
    limit = _limit(request)
    storage = request.registry.storage
    position = journal.position(storage)
    _set_etag(request, position)
    if _not_modified(request, position):
        response = httpexceptions.HTTPNotModified()
        response.headers["ETag"] = f'"{position}"'
        raise response
    entries, more = journal.read(storage, since, limit)
    # Read after the entries: a trimming pass committed meanwhile shows here, so a cursor whose
    # entries went missing always gets 410, never a silently short page.
    trimmed_to = journal.floor(storage)
    if since is not None and since < trimmed_to:
        raise http_error(
            httpexceptions.HTTPGone(),
            errno=ERRORS.UNDEFINED,
            message=(
                f"The journal no longer holds the entries after {since}: read the whole state "
                "again (/tandem/objects) and follow the journal from there."
            ),
            details={"floor": trimmed_to},
        )
    if more:
        request.response.headers["Next-Page"] = _next_page(
            request, journal_service, _since=entries[-1]["last_modified"], _limit=limit
        )
    return {"data": entries}


@objects_service.get(permission=NO_PERMISSION_REQUIRED)
def get_objects(request):
    """``?_after=<uri>&_limit=N``: every object after ``<uri>``, in the dump's order."""
    authorize(request)
    limit = _limit(request)
    after = request.GET.get("_after")
    if after is not None:
        try:
            after = uris.parse(after)
        except ValueError as e:
            raise_invalid(request, location="querystring", name="_after", description=str(e))
    storage = request.registry.storage
    # The journal's position before the page is read: whatever changes while it is read
    # comes again through the journal after this position.
    _set_etag(request, journal.position(storage))
    page = []
    for item in dump.walk(storage, after, chunk=limit + 1):
        page.append(item)
        if len(page) > limit:
            break
    more = len(page) > limit
    page = page[:limit]
    live = [ref for ref, _, tombstone in page if not tombstone]
    acls = journal.object_acls(request.registry.permission, live)
    data = []
    for ref, obj, tombstone in page:
        item = {"uri": ref.uri, "resource_name": ref.resource_name, "data": obj}
        if not tombstone:
            item["permissions"] = acls[ref.uri]
        data.append(item)
    if more:
        request.response.headers["Next-Page"] = _next_page(
            request, objects_service, _after=page[-1][0].uri, _limit=limit
        )
    return {"data": data}


@restore_service.post(permission=NO_PERMISSION_REQUIRED)
def post_restore(request):
    """``{"objects": [item, ...]}``: writes them, answers ``{"results": [...]}``."""
    authorize(request)
    try:
        body = request.json_body
    except ValueError:
        raise_invalid(request, location="body", description="Invalid JSON")
    storage = request.registry.storage
    try:
        items = restore.parse(
            body, request.registry.tandem.restore_max_objects, journal.is_postgresql(storage)
        )
        # Everything is checked before the first write: the memory backend has no rollback.
        restore.check_parents(storage, items)
    except restore.Invalid as e:
        raise_invalid(request, location="body", name=e.name, description=e.description)
    return {"results": restore.Restore(request).run(items)}

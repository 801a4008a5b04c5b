"""kinto-tandem: what a replicator of a whole Kinto server needs and Kinto's API cannot give.

Kinto's HTTP API shows each principal only what its ACLs allow, changes ACLs and timestamps
as it writes, and cannot set a password hash. tandem (the backup daemon this plugin serves)
needs, on a source, every change of the server in one order with complete data and
permissions (:mod:`.journal`, :mod:`.dump`) and, on a restore target, a way to write objects
exactly as they were (:mod:`.restore`). The contract is ``docs/kinto-plugin.md`` in tandem's
repository.

Enable with ``kinto.includes = kinto_tandem`` and name who may use it::

    kinto.tandem.principals = account:tandem
"""

import hashlib
import hmac
from dataclasses import dataclass
from importlib.metadata import version

from kinto.core import metrics
from kinto.core.events import ResourceChanged
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.settings import aslist
from pyramid.tweens import EXCVIEW

from . import journal, views


__version__ = version("kinto-tandem")

DEFAULT_JOURNAL_MAX_ENTRIES = 1_000_000
DEFAULT_RESTORE_MAX_OBJECTS = 1000


#: Default and largest page of the journal and of the dump.
MAX_PAGE = 10000


@dataclass
class Settings:
    """The plugin's settings, checked once at startup (``registry.tandem``)."""

    principals: frozenset
    journal_max_entries: int
    restore_max_objects: int
    #: Largest page, and most objects asked of the storage backend at once: 10,000, or
    #: ``storage_max_fetch_size`` if lower (the PostgreSQL backend returns no more).
    page_max: int
    #: When this process trims the journal next (see ``journal.TrimSchedule``).
    trim_schedule: journal.TrimSchedule


def secrets_fingerprint(settings: dict) -> str:
    """SHA-256 over what the secrets that decide identities make of a fixed probe.

    Two servers with the same fingerprint give every user the same ``basicauth:`` principal
    (``userid_hmac_secret``) and the same default bucket id. The default bucket's secret is
    taken the way ``kinto.plugins.default_bucket`` takes it: Kinto 26 defines
    ``default_bucket_hmac_secret`` as empty by default, and then uses the empty key (not
    ``userid_hmac_secret``). The probe's HMACs reveal no more than a default bucket id does.
    """
    userid_secret = str(settings["userid_hmac_secret"])
    bucket_secret = str(settings.get("default_bucket_hmac_secret", userid_secret))
    probe = b"tandem-probe"
    parts = [
        hmac.new(secret.encode("utf-8"), probe, hashlib.sha256).hexdigest()
        for secret in (userid_secret, bucket_secret)
    ]
    return hashlib.sha256(("tandem-secrets-v1\n" + "\n".join(parts)).encode()).hexdigest()


def _int_setting(settings: dict, name: str, default: int, minimum: int) -> int:
    raw = settings.get(f"tandem.{name}", default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or value < minimum:
        raise ConfigurationError(
            f"kinto.tandem.{name} must be an integer >= {minimum}, not {raw!r}"
        )
    return value


def includeme(config: Configurator) -> None:
    settings = config.get_settings()
    journal_max_entries = _int_setting(
        settings, "journal_max_entries", DEFAULT_JOURNAL_MAX_ENTRIES, 0
    )
    config.registry.tandem = Settings(
        principals=frozenset(aslist(settings.get("tandem.principals", ""))),
        journal_max_entries=journal_max_entries,
        restore_max_objects=_int_setting(
            settings, "restore_max_objects", DEFAULT_RESTORE_MAX_OBJECTS, 1
        ),
        page_max=min(MAX_PAGE, int(settings["storage_max_fetch_size"])),
        trim_schedule=journal.TrimSchedule(journal_max_entries),
    )

    config.add_api_capability(
        "tandem",
        description="Server-wide journal, objects dump and exact restore, for tandem.",
        # tandem publishes no website: the contract lives beside its code.
        url="docs/kinto-plugin.md",
        version=__version__,
        journal=True,
        restore=True,
        secrets_fingerprint=secrets_fingerprint(settings),
    )

    config.add_cornice_service(views.journal_service)
    config.add_cornice_service(views.objects_service)
    config.add_cornice_service(views.restore_service)

    listener = metrics.listener_with_timer(config, "plugins.tandem", journal.on_resource_changed)
    config.add_subscriber(
        listener,
        ResourceChanged,
        for_resources=("bucket", "group", "collection", "record", "account"),
    )
    # Over Kinto's tween that notifies ResourceChanged, so that the queued entries are
    # written after every event of the request, and under EXCVIEW, so inside the transaction.
    config.add_tween(
        "kinto_tandem.journal.tween_factory",
        over="kinto.core.events.notify_resource_events_before",
        under=EXCVIEW,
    )

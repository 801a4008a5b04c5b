"""Test servers: the real Kinto application (``kinto.main``) with the plugin, in-process.

Requests go through the whole WSGI stack (tweens, ``pyramid_tm`` transactions, cornice,
authentication) as they do under ``kinto start``; ``test_install.py`` also runs the plugin in
a real ``kinto start`` process from an ini file. Every test runs on both storage backends:
memory, and PostgreSQL when ``TANDEM_TEST_POSTGRES=postgresql://USER@HOST:PORT`` names a server
(``scripts/test`` starts one), each server on a database of its own.

Accounts hash passwords with bcrypt's cost 12 (a quarter of a second each); the tests create
dozens, so bcrypt runs at its cheapest cost here. Hashes stay real bcrypt hashes.
"""

import base64
import itertools
import json
import os
import threading
import uuid
import warnings
from urllib.parse import urlsplit

import bcrypt
import kinto
import pytest
import transaction
from webob import Request


_gensalt = bcrypt.gensalt
bcrypt.gensalt = lambda rounds=12, prefix=b"2b": _gensalt(4, prefix)

PASSWORD = "s3cret-pw"
POSTGRES = os.environ.get("TANDEM_TEST_POSTGRES", "").rstrip("/")
BACKENDS = ["memory", "postgresql"]

warnings.filterwarnings("ignore", message="HTTPS is not enabled")
warnings.filterwarnings("ignore", message="Reuse existing PostgreSQL connection")


class Response:
    """What a request got back."""

    def __init__(self, response):
        self.status = response.status_code
        self.headers = response.headers
        self.body = response.body
        self.json = json.loads(response.body) if response.body else None

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


class Kinto:
    """A Kinto application with the plugin, and helpers to call it."""

    def __init__(self, backend: str, database: str | None, settings: dict):
        self.backend = backend
        self.database = database
        self.settings = settings
        self.app = kinto.main({}, **settings)
        self.registry = self.app.registry
        self.storage = self.registry.storage
        self.permission = self.registry.permission
        if backend == "postgresql":
            self.storage.initialize_schema()
            self.permission.initialize_schema()
        self.accounts = set()

    # Requests.

    def request(self, method, path, body=None, user=None, headers=None, status=None, raw=None):
        """``path`` relative to ``/v1`` (or a full URL, as in ``Next-Page``); ``status``
        asserts the answer's."""
        if path.startswith("http"):
            parts = urlsplit(path)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
        else:
            path = "/v1" + path
        request = Request.blank(path, method=method)
        if raw is not None:
            request.body = raw
            request.content_type = "application/json"
        elif body is not None:
            request.body = json.dumps(body).encode()
            request.content_type = "application/json"
        if user is not None:
            password = PASSWORD
            if isinstance(user, tuple):
                user, password = user
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.headers["Authorization"] = f"Basic {token}"
        for name, value in (headers or {}).items():
            request.headers[name] = value
        response = Response(request.get_response(self.app))
        if status is not None:
            assert response.status == status, (method, path, response)
        return response

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body if body is not None else {"data": {}}, **kw)

    def patch(self, path, body, **kw):
        return self.request("PATCH", path, body, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def batch(self, requests, user="admin"):
        answer = self.post("/batch", {"requests": requests}, user=user, status=200).json
        statuses = [r["status"] for r in answer["responses"]]
        assert all(s < 400 for s in statuses), answer
        return answer["responses"]

    # Helpers.

    def account(self, name: str, password: str = PASSWORD) -> str:
        """Creates the account once; returns its name (to pass as ``user=``)."""
        if name not in self.accounts:
            self.put(f"/accounts/{name}", {"data": {"password": password}}, status=201)
            self.accounts.add(name)
        return name

    def journal(self, since=None, limit=None, status=200, **kw):
        params = [f"_since={since}"] if since is not None else []
        params += [f"_limit={limit}"] if limit is not None else []
        query = ("?" + "&".join(params)) if params else ""
        return self.get(
            f"/tandem/journal{query}", user=self.account("tandem"), status=status, **kw
        )

    def whole_journal(self):
        """Every entry, following Next-Page."""
        entries = []
        response = self.journal()
        while True:
            entries += response.json["data"]
            following = response.headers.get("Next-Page")
            if not following:
                return entries
            response = self.get(following, user="tandem", status=200)

    def dump(self, limit=None):
        """Every item of the objects dump, following Next-Page, and the first page's ETag."""
        path = "/tandem/objects" + (f"?_limit={limit}" if limit else "")
        response = self.get(path, user=self.account("tandem"), status=200)
        etag = response.headers["ETag"]
        items = []
        while True:
            items += response.json["data"]
            following = response.headers.get("Next-Page")
            if not following:
                return items, etag
            response = self.get(following, user="tandem", status=200)

    def restore(self, objects, status=200):
        return self.post(
            "/tandem/restore", {"objects": objects}, user=self.account("tandem"), status=status
        )

    def flush(self):
        """Empties the backends, as Kinto's flush endpoint does."""
        transaction.abort()
        self.storage.flush()
        self.permission.flush()
        self.registry.cache.flush()
        self.accounts = set()

    def close(self):
        if self.backend == "postgresql":
            # Tests read the backends directly too, outside any request: that session joined
            # this thread's zope transaction, which no request will end now.
            transaction.abort()
            for backend in (self.storage, self.permission):
                engine = backend.client.session_factory.session_factory.kw["bind"]
                engine.dispose()
            drop_database(self.database)


_databases = itertools.count()


def _admin_connection():
    import psycopg2

    connection = psycopg2.connect(POSTGRES + "/postgres")
    connection.autocommit = True
    return connection


def create_database() -> str:
    name = f"tandem_plugin_{os.getpid()}_{next(_databases)}_{uuid.uuid4().hex[:6]}"
    connection = _admin_connection()
    try:
        connection.cursor().execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()
    return name


def drop_database(name: str) -> None:
    connection = _admin_connection()
    try:
        connection.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        connection.close()


def kinto_settings(backend: str, database: str | None, **overrides) -> dict:
    """The settings of a test server, as an ini would give them (``kinto.`` prefixed).
    ``history=True`` adds the history plugin; other keyword arguments are settings, with
    ``__`` for ``.`` (``tandem__journal_max_entries=5``)."""
    includes = [
        "kinto.plugins.accounts",
        "kinto.plugins.default_bucket",
        "kinto.plugins.flush",
        "kinto_tandem",
    ]
    if overrides.pop("history", False):
        includes.insert(1, "kinto.plugins.history")
    settings = {
        "kinto.includes": " ".join(includes),
        "kinto.userid_hmac_secret": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "multiauth.policies": "account",
        "multiauth.policy.account.use": "kinto.plugins.accounts.AccountsPolicy",
        "kinto.account_create_principals": "system.Everyone",
        "kinto.account_write_principals": "account:admin",
        "kinto.bucket_create_principals": "system.Authenticated",
        "kinto.batch_max_requests": "200",
        "kinto.tandem.principals": "account:tandem",
        "kinto.cache_backend": "kinto.core.cache.memory",
    }
    if backend == "postgresql":
        url = f"{POSTGRES}/{database}"
        settings.update(
            {
                "kinto.storage_backend": "kinto.core.storage.postgresql",
                "kinto.storage_url": url,
                "kinto.permission_backend": "kinto.core.permission.postgresql",
                "kinto.permission_url": url,
                "kinto.storage_pool_size": "4",
            }
        )
    else:
        settings.update(
            {
                "kinto.storage_backend": "kinto.core.storage.memory",
                "kinto.permission_backend": "kinto.core.permission.memory",
            }
        )
    for key, value in overrides.items():
        settings["kinto." + key.replace("__", ".")] = str(value)
    return settings


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "postgresql" and not POSTGRES:
        pytest.skip("TANDEM_TEST_POSTGRES is not set (scripts/test starts a PostgreSQL server)")
    return request.param


@pytest.fixture
def make_kinto(backend):
    """``make_kinto(**settings)``: a new server (and database) on the test's backend."""
    made = []

    def make(**overrides):
        database = create_database() if backend == "postgresql" else None
        server = Kinto(backend, database, kinto_settings(backend, database, **overrides))
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="session")
def shared_servers():
    """One server per backend with the default settings, shared by the tests that need no
    other (building a Kinto application takes half a second): see ``server``."""
    servers = {}
    yield servers
    for shared in servers.values():
        shared.close()


@pytest.fixture
def server(backend, shared_servers):
    """A server with the default settings, emptied, with the accounts ``admin`` and
    ``tandem``."""
    shared = shared_servers.get(backend)
    if shared is None:
        database = create_database() if backend == "postgresql" else None
        shared = shared_servers[backend] = Kinto(
            backend, database, kinto_settings(backend, database)
        )
    shared.flush()
    shared.account("admin")
    shared.account("tandem")
    yield shared
    transaction.abort()


def run_threads(*targets):
    """Runs the callables in threads; re-raises the first failure."""
    errors = []

    def wrap(target):
        def run():
            try:
                target()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]

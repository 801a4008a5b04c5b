"""The plugin as installed: ``kinto start`` with ``kinto.includes = kinto_tandem`` in an ini."""

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import POSTGRES, create_database, drop_database


INI = """\
[server:main]
use = egg:waitress#main
host = 127.0.0.1
port = %(http_port)s

[app:main]
use = egg:kinto
kinto.includes = kinto.plugins.accounts
                 kinto.plugins.history
                 kinto_tandem
kinto.storage_backend = kinto.core.storage.{backend}
kinto.storage_url = {url}
kinto.permission_backend = kinto.core.permission.{backend}
kinto.permission_url = {url}
kinto.cache_backend = kinto.core.cache.memory
kinto.userid_hmac_secret = 0a1b2c3d4e5f60718293a4b5c6d7e8f9
multiauth.policies = account
multiauth.policy.account.use = kinto.plugins.accounts.AccountsPolicy
kinto.account_create_principals = system.Everyone
kinto.account_write_principals = account:admin
kinto.bucket_create_principals = system.Authenticated
kinto.tandem.principals = account:tandem

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = plain

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = plain

[formatter_plain]
format = %(levelname)s %(message)s
"""


def call(url, method="GET", body=None, user=None):
    request = urllib.request.Request(url, method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if user:
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()
        )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def kinto_process(backend, tmp_path):
    """A ``kinto start`` process on a free loopback port; its root URL."""
    kinto = Path(sys.executable).parent / "kinto"
    database = None
    url = ""
    if backend == "postgresql":
        database = create_database()
        url = f"{POSTGRES}/{database}"
    ini = tmp_path / "kinto.ini"
    ini.write_text(INI.format(backend=backend, url=url))
    if backend == "postgresql":
        subprocess.run([str(kinto), "migrate", "--ini", str(ini)], check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [str(kinto), "start", "--ini", str(ini), "--port", str(port)],
        stdout=log,
        stderr=log,
        cwd=tmp_path,
    )
    root = f"http://127.0.0.1:{port}/v1/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if call(root + "__lbheartbeat__")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        yield root
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        if database:
            drop_database(database)


def test_kinto_start_with_the_plugin(kinto_process):
    root = kinto_process
    for user in ("tandem", "alice"):
        assert call(root + f"accounts/{user}", "PUT", {"data": {"password": "pw"}})[0] == 201
    status, hello = call(root)
    assert hello["capabilities"]["tandem"]["version"] == "1.0.0"
    assert call(root + "buckets/b", "PUT", {"data": {}}, user="alice")[0] == 201
    assert call(root + "buckets/b/collections/c", "PUT", {"data": {}}, user="alice")[0] == 201
    assert call(root + "tandem/journal", user="alice")[0] == 403
    status, journal = call(root + "tandem/journal", user="tandem")
    assert status == 200
    assert [e["uri"] for e in journal["data"]] == [
        "/accounts/tandem",
        "/accounts/alice",
        "/buckets/b",
        "/buckets/b/collections/c",
    ]
    status, dump = call(root + "tandem/objects", user="tandem")
    assert [i["uri"] for i in dump["data"]] == [
        "/accounts/alice",
        "/accounts/tandem",
        "/buckets/b",
        "/buckets/b/collections/c",
    ]
    record = {
        "uri": "/buckets/b/collections/c/records/r",
        "resource_name": "record",
        "data": {"id": "r", "last_modified": 1234},
        "permissions": {"read": ["account:alice"]},
    }
    status, answer = call(root + "tandem/restore", "POST", {"objects": [record]}, user="tandem")
    assert (status, answer) == (200, {"results": [{"uri": record["uri"], "status": "created"}]})
    status, got = call(root + "buckets/b/collections/c/records/r", user="alice")
    assert got["data"] == record["data"]
    status, history = call(root + "buckets/b/history?resource_name=record", user="alice")
    assert [h["target"]["data"] for h in history["data"]] == [record["data"]]

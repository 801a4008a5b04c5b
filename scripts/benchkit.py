"""What the benchmark scripts share: paths, a free port, an authenticated JSON request, and a
throwaway Kinto (one process, 4 threads) started from the test virtualenv.

Kinto stores into memory unless BENCH_POSTGRES names a PostgreSQL server
(`postgresql://USER@HOST:PORT`): then each Kinto gets a new database of its own there, created
and migrated here. That needs psycopg2-binary, SQLAlchemy and zope.sqlalchemy in the virtualenv
(`pip install psycopg2-binary 'SQLAlchemy<3' zope.sqlalchemy`)."""
import base64
import datetime
import json
import os
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("TANDEM_TEST_VENV", os.path.join(ROOT, "target/test-venv"))
TANDEM = os.path.join(ROOT, "target/release/tandem")
PW = "bench-pw"
POSTGRES = os.environ.get("BENCH_POSTGRES", "").rstrip("/")
BACKEND = "postgresql" if POSTGRES else "memory"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(url, method="GET", body=None, user="admin"):
    """A JSON request as `user` (password PW): (decoded body, headers)."""
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{PW}".encode()).decode())
    with urllib.request.urlopen(req) as r:
        return json.load(r), r.headers


def start_kinto(workdir, settings="", plugins=(), access_log=False, users=("admin",)):
    """Starts Kinto in `workdir` with `settings` (ini lines) and `plugins` besides accounts;
    with `access_log`, each request is logged to workdir/access.log as "code method path time t"
    (read them with `access_log`).
    Creates `users` with password PW. Returns (process, root URL ending in /v1/)."""
    os.makedirs(workdir, exist_ok=True)
    port = free_port()
    storage_url = ""
    if POSTGRES:
        database = f"tandem_bench_{os.getpid()}_{port}"
        subprocess.run([os.path.join(VENV, "bin/python"), "-c",
                        "import psycopg2, sys; c = psycopg2.connect(sys.argv[1] + '/postgres'); "
                        "c.autocommit = True; c.cursor().execute('CREATE DATABASE ' + sys.argv[2])",
                        POSTGRES, database], check=True)
        storage_url = f"{POSTGRES}/{database}"
    includes = "\n                 ".join(("kinto.plugins.accounts",) + tuple(plugins))
    ini = f"""[server:main]
use = egg:waitress#main
host = 127.0.0.1
port = %(http_port)s
threads = 4
[app:main]
use = egg:kinto
kinto.includes = {includes}
kinto.storage_backend = kinto.core.storage.{BACKEND}
kinto.storage_url = {storage_url}
kinto.cache_backend = kinto.core.cache.memory
kinto.cache_url =
kinto.permission_backend = kinto.core.permission.{BACKEND}
kinto.permission_url = {storage_url}
kinto.userid_hmac_secret = 0a1b2c3d4e5f6071
multiauth.policies = account
multiauth.policy.account.use = kinto.plugins.accounts.AccountsPolicy
kinto.account_create_principals = system.Everyone
{settings}
[loggers]
keys = root, access
[handlers]
keys = console, access
[formatters]
keys = plain, access
[logger_root]
level = WARNING
handlers = console
[logger_access]
level = {"INFO" if access_log else "WARNING"}
handlers = access
qualname = request.summary
propagate = 0
[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = plain
[handler_access]
class = FileHandler
args = ('{workdir}/access.log',)
level = NOTSET
formatter = access
[formatter_plain]
format = %(message)s
[formatter_access]
format = %(code)s %(method)s %(path)s %(time)s %(t)s
"""
    with open(os.path.join(workdir, "kinto.ini"), "w") as f:
        f.write(ini)
    if POSTGRES:
        subprocess.run([os.path.join(VENV, "bin/kinto"), "migrate", "--ini", "kinto.ini"], cwd=workdir,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([os.path.join(VENV, "bin/kinto"), "start", "--ini", "kinto.ini", "--port", str(port)],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "server.log"), "w"))
    url = f"http://127.0.0.1:{port}/v1/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "__heartbeat__")
            break
        except Exception:
            time.sleep(0.1)
    for user in users:
        req = urllib.request.Request(url + f"accounts/{user}", method="PUT", data=json.dumps({"data": {"password": PW}}).encode())
        req.add_header("Content-Type", "application/json")
        urllib.request.urlopen(req)
    return proc, url


def access_log(path, skip=0):
    """The requests of an access log written by `start_kinto(access_log=True)`, after its first
    `skip` lines: a list of (code, method, path, start, end), times in ms since the epoch as
    Kinto took them (the response's time minus its duration `t`)."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f):
            fields = line.split()
            if n < skip or len(fields) < 5:
                continue
            end = datetime.datetime.fromisoformat(fields[3]).timestamp() * 1000
            out.append((fields[0], fields[1], fields[2], end - float(fields[4]), end))
    return out


def passes(requests, gap_ms=2000):
    """Groups requests (from `access_log`) into passes: a new pass starts after `gap_ms` without
    a request. Returns a list of (request count, ms from the first request's arrival to the last
    response)."""
    groups = []
    for r in sorted(requests, key=lambda r: r[3]):
        if groups and r[3] - max(q[4] for q in groups[-1]) <= gap_ms:
            groups[-1].append(r)
        else:
            groups.append([r])
    return [(len(g), max(r[4] for r in g) - g[0][3]) for g in groups]

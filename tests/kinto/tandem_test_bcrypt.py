"""A Kinto include for the test servers only: new account passwords are hashed with bcrypt at
its lowest cost (4 rounds) instead of the library's default (12).

Kinto's accounts plugin calls ``bcrypt.gensalt()`` for every new password and ``bcrypt.checkpw``
at each first login of a user; at cost 12 each takes about 0.25 s of CPU, and every test server
creates five accounts. The hashes keep bcrypt's format (``$2b$04$...``), are checked the same
way and come back the same through backup and restore; only the work factor differs, which no
test measures. Servers started outside the tests (scripts/demo, the benchmarks, production)
never load this module.
"""

import bcrypt

_gensalt = bcrypt.gensalt


def includeme(config):
    def gensalt(rounds=4, prefix=b"2b"):
        return _gensalt(rounds, prefix)

    bcrypt.gensalt = gensalt

"""The secrets fingerprint: equal exactly when the secrets give users the same identities."""

import hashlib
import hmac
import re


def capability(server):
    return server.get("/", status=200).json["capabilities"]["tandem"]


def expected(userid_secret, bucket_secret):
    parts = [
        hmac.new(s.encode(), b"tandem-probe", hashlib.sha256).hexdigest()
        for s in (userid_secret, bucket_secret)
    ]
    return hashlib.sha256(("tandem-secrets-v1\n" + "\n".join(parts)).encode()).hexdigest()


def test_capability(server):
    tandem = capability(server)
    assert tandem["version"] == "1.0.0"
    assert tandem["journal"] is True and tandem["restore"] is True
    assert tandem["description"] and tandem["url"]
    assert re.fullmatch(r"[0-9a-f]{64}", tandem["secrets_fingerprint"])


def test_fingerprint_follows_the_secrets(make_kinto):
    userid_secret = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    first = make_kinto()
    same = make_kinto(batch_max_requests=7, tandem__principals="account:other")
    other_userid = make_kinto(userid_hmac_secret="another")
    other_bucket = make_kinto(default_bucket_hmac_secret="bucket-secret")
    fingerprints = [
        capability(s)["secrets_fingerprint"] for s in (first, same, other_userid, other_bucket)
    ]
    # Unset, Kinto 26's default bucket secret is the empty string (not userid_hmac_secret).
    assert fingerprints[0] == expected(userid_secret, "")
    assert fingerprints[3] == expected(userid_secret, "bucket-secret")
    assert fingerprints[0] == fingerprints[1]
    assert len(set(fingerprints[1:])) == 3

    # What it stands for: the same default bucket id for the same user, or not.
    def bucket(server):
        return server.get("/", user=server.account("alice"), status=200).json["user"]["bucket"]

    assert bucket(first) == bucket(same)
    assert bucket(first) != bucket(other_bucket)

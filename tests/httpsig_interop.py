#!/usr/bin/env python3
"""Signs or verifies a tandem peer request with the Python http-message-signatures package,
an RFC 9421 implementation independent of tandem.

  sign KEY_PEM KEYID METHOD URL BODY_FILE CREATED TARGET NONCE
      signs for the node TARGET (the Tandem-Target header, covered) with the nonce NONCE;
      prints {"content-digest", "tandem-target", "signature-input", "signature"} as JSON.
      TARGET and NONCE "-" sign as tandem releases before the target binding did: neither the
      header nor a nonce (and "tandem-target" is null)
  verify PUBLIC_KEY_HEX KEYID METHOD URL BODY_FILE CONTENT_DIGEST SIGNATURE_INPUT SIGNATURE TARGET
      verifies as the node TARGET: the request carries Tandem-Target: TARGET, and the signature
      must cover it, the body's digest and the other components tandem requires, and carry a
      nonce; exits 0 and prints {"label", "covered", "nonce"} if it verifies, 1 otherwise
"""
import datetime
import json
import sys

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms

COVERED = ("@method", "@path", "@query", "content-digest", "tandem-target")


class Resolver(HTTPSignatureKeyResolver):
    def __init__(self, keyid, private=None, public=None):
        self.keyid, self.private, self.public = keyid, private, public

    def resolve_private_key(self, key_id):
        assert key_id == self.keyid, key_id
        return self.private

    def resolve_public_key(self, key_id):
        assert key_id == self.keyid, key_id
        return self.public


def main():
    mode = sys.argv[1]
    if mode == "sign":
        pem, keyid, method, url, body_file, created, target, nonce = sys.argv[2:10]
        body = open(body_file, "rb").read()
        key = load_pem_private_key(open(pem, "rb").read(), password=None)
        # The library computes Content-Digest itself from the body (an independent digest).
        legacy = target == "-"
        headers = {} if legacy else {"Tandem-Target": target}
        covered = tuple(c for c in COVERED if not (legacy and c == "tandem-target"))
        request = requests.Request(method, url, data=body, headers=headers).prepare()
        signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Resolver(keyid, private=key))
        signer.sign(
            request,
            key_id=keyid,
            created=datetime.datetime.fromtimestamp(int(created), tz=datetime.timezone.utc),
            label="tandem",
            covered_component_ids=covered,
            include_alg=True,
            nonce=None if nonce == "-" else nonce,
            body=body,
        )
        print(json.dumps({
            "content-digest": request.headers["Content-Digest"],
            "tandem-target": request.headers.get("Tandem-Target"),
            "signature-input": request.headers["Signature-Input"],
            "signature": request.headers["Signature"],
        }))
    elif mode == "verify":
        public_hex, keyid, method, url, body_file, digest, signature_input, signature, target = sys.argv[2:11]
        body = open(body_file, "rb").read()
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        request = requests.Request(method, url, data=body, headers={
            "Content-Digest": digest, "Tandem-Target": target,
            "Signature-Input": signature_input, "Signature": signature}).prepare()
        verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=Resolver(keyid, public=public))
        try:
            # The library checks the body against Content-Digest itself (body=...).
            results = verifier.verify(
                request, max_age=datetime.timedelta(days=36500),
                require_components=COVERED, body=body)
            if not results[0].nonce:
                raise ValueError("the signature carries no nonce")
        except Exception as e:  # any failure to verify
            print(f"verification failed: {e!r}", file=sys.stderr)
            sys.exit(1)
        covered = [str(c.value) if hasattr(c, "value") else str(c) for c in results[0].covered_components]
        print(json.dumps({"label": results[0].label, "covered": covered, "nonce": results[0].nonce}))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

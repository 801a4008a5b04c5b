#!/usr/bin/env python3
"""Signs or verifies a tandem peer request with the Python http-message-signatures package,
an RFC 9421 implementation independent of tandem.

  sign KEY_PEM KEYID METHOD URL BODY_FILE CREATED
      prints {"content-digest", "signature-input", "signature"} as JSON
  verify PUBLIC_KEY_HEX KEYID METHOD URL BODY_FILE CONTENT_DIGEST SIGNATURE_INPUT SIGNATURE
      exits 0 if the signature verifies, 1 otherwise
"""
import datetime
import json
import sys

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms

COVERED = ("@method", "@path", "@query", "content-digest")


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
        pem, keyid, method, url, body_file, created = sys.argv[2:8]
        body = open(body_file, "rb").read()
        key = load_pem_private_key(open(pem, "rb").read(), password=None)
        # The library computes Content-Digest itself from the body (an independent digest).
        request = requests.Request(method, url, data=body).prepare()
        signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Resolver(keyid, private=key))
        signer.sign(
            request,
            key_id=keyid,
            created=datetime.datetime.fromtimestamp(int(created), tz=datetime.timezone.utc),
            label="tandem",
            covered_component_ids=COVERED,
            include_alg=True,
            body=body,
        )
        print(json.dumps({
            "content-digest": request.headers["Content-Digest"],
            "signature-input": request.headers["Signature-Input"],
            "signature": request.headers["Signature"],
        }))
    elif mode == "verify":
        public_hex, keyid, method, url, body_file, digest, signature_input, signature = sys.argv[2:10]
        body = open(body_file, "rb").read()
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        request = requests.Request(method, url, data=body, headers={
            "Content-Digest": digest, "Signature-Input": signature_input, "Signature": signature}).prepare()
        verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=Resolver(keyid, public=public))
        try:
            results = verifier.verify(request, max_age=datetime.timedelta(days=36500))
        except Exception as e:  # any failure to verify
            print(f"verification failed: {e!r}", file=sys.stderr)
            sys.exit(1)
        covered = [str(c.value) if hasattr(c, "value") else str(c) for c in results[0].covered_components]
        print(json.dumps({"label": results[0].label, "covered": covered}))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

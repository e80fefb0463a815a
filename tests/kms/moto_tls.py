"""moto's AWS KMS, served over TLS on loopback for cidboot's tests (cidboot talks to KMS over
https only).

    python moto_tls.py CERT KEY [--auth] [--keys N] [--region REGION]

Prints one JSON line on stdout once it listens, then serves until stdin closes:
    {"port": P, "region": R, "keys": [ARN, ...], "access_key_id": ID, "secret_access_key": S}

--keys creates N symmetric KMS keys. --auth turns on moto's authentication mode
(INITIAL_NO_AUTH_ACTION_COUNT = 0): every request must then be signed with SigV4 by an IAM
user's access key, which moto checks by recomputing the signature; the user printed is allowed
kms:*. Without --auth, moto takes any credentials and does not look at the signature.
"""

import argparse
import json
import logging
import ssl
import sys
import threading

from moto import settings
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iam.models import iam_backends
from moto.kms.models import kms_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


def main():
    # One line per request would bury the test's own output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    p = argparse.ArgumentParser()
    p.add_argument("cert")
    p.add_argument("key")
    p.add_argument("--auth", action="store_true")
    p.add_argument("--keys", type=int, default=1)
    p.add_argument("--region", default="us-east-1")
    a = p.parse_args()

    out = {"region": a.region, "keys": []}
    kms = kms_backends[DEFAULT_ACCOUNT_ID][a.region]
    for i in range(a.keys):
        k = kms.create_key(None, "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT", f"cidboot test key {i}", None)
        out["keys"].append(k.arn)

    if a.auth:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
        iam.create_user(a.region, "cidboot-operator")
        iam.put_user_policy(
            "cidboot-operator",
            "kms",
            json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}],
            }),
        )
        key = iam.create_access_key("cidboot-operator")
        out["access_key_id"] = key.access_key_id
        out["secret_access_key"] = key.secret_access_key
    else:
        out["access_key_id"] = "AKIAMOTOANYKEY000000"
        out["secret_access_key"] = "any-secret"

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler, ssl_context=ctx
    )
    out["port"] = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps(out), flush=True)
    # The test holds stdin open; when it goes away (the test ended, or died), so does moto.
    sys.stdin.read()


if __name__ == "__main__":
    main()

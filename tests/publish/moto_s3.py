"""moto's S3, served over TLS on loopback for cidboot's tests, with SigV4 checked.

    python moto_s3.py CERT KEY --bucket NAME [--region REGION]

moto's authentication mode is on (INITIAL_NO_AUTH_ACTION_COUNT = 0): every request must be
signed with SigV4 by the IAM user made here (allowed s3:*), which moto checks by recomputing
the signature. Prints one JSON line once it listens:
    {"port": P, "region": R, "access_key_id": ID, "secret_access_key": S}
then answers one JSON line per KEY read on stdin, what the bucket holds under that key:
    {"found": true, "metadata": {...}, "sha256": HEX, "size": N}
and stops when stdin closes.
"""

import argparse
import hashlib
import json
import logging
import ssl
import sys
import threading

from moto import settings
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iam.models import iam_backends
from moto.s3.models import s3_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    p = argparse.ArgumentParser()
    p.add_argument("cert")
    p.add_argument("key")
    p.add_argument("--bucket", required=True)
    p.add_argument("--region", default="us-east-1")
    a = p.parse_args()

    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    s3.create_bucket(a.bucket, a.region)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user(a.region, "cidboot-publisher")
    iam.put_user_policy(
        "cidboot-publisher",
        "s3",
        json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }),
    )
    key = iam.create_access_key("cidboot-publisher")
    out = {
        "region": a.region,
        "access_key_id": key.access_key_id,
        "secret_access_key": key.secret_access_key,
    }

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler, ssl_context=ctx
    )
    out["port"] = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps(out), flush=True)
    for line in sys.stdin:
        name = line.strip()
        try:
            obj = s3.get_object(a.bucket, name)
        except Exception:
            obj = None
        if obj is None:
            print(json.dumps({"found": False}), flush=True)
            continue
        print(json.dumps({
            "found": True,
            "metadata": dict(obj.metadata),
            "sha256": hashlib.sha256(obj.value).hexdigest(),
            "size": len(obj.value),
        }), flush=True)


main()

"""A test double of the EC2 instance metadata service, IMDSv2 only, for `cidboot host`'s
[credentials] source = "imds". It does what AWS documents for the paths an SDK reads the role's
credentials from (docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html
and instance-metadata-security-credentials.html):

- PUT /latest/api/token needs X-aws-ec2-metadata-token-ttl-seconds, 1 to 21600 (otherwise 400),
  refuses a request with X-Forwarded-For (403), and answers a token, echoing the TTL header;
- every GET needs a valid, unexpired token in X-aws-ec2-metadata-token (otherwise 401, as on an
  instance with HttpTokens = required);
- GET /latest/meta-data/iam/security-credentials/ answers the role's name;
- GET /latest/meta-data/iam/security-credentials/ROLE answers the JSON document with Code,
  LastUpdated, Type, AccessKeyId, SecretAccessKey, Token and Expiration;
- new credentials are made available --rotate-before seconds (AWS: at least five minutes)
  before the current ones expire, after --lifetime seconds.

    python imds.py [--role R] [--lifetime SECS] [--rotate-before SECS] [--token-cap SECS]

--token-cap makes every token expire after that many seconds whatever TTL was asked, as a
token that outlived its TTL would: a client must then take a new one.

Prints one JSON line once it listens ({"port": P, "role": R}) and serves on 127.0.0.1 until
stdin closes.
"""

import argparse
import datetime
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/latest/meta-data/iam/security-credentials/"


class State:
    def __init__(self, a):
        self.a = a
        self.tokens = {}
        self.generation = 0
        self.current = None
        self.lock = threading.Lock()

    def credentials(self):
        """The role's credentials now: new ones once the current are within rotate-before of
        their expiration."""
        with self.lock:
            now = time.time()
            if self.current is None or now >= self.current["expires"] - self.a.rotate_before:
                self.generation += 1
                n = self.generation
                self.current = {
                    "expires": now + self.a.lifetime,
                    "doc": {
                        "Code": "Success",
                        "LastUpdated": stamp(now),
                        "Type": "AWS-HMAC",
                        "AccessKeyId": f"ASIAIMDSTEST{n:08d}",
                        "SecretAccessKey": secrets.token_urlsafe(30),
                        "Token": secrets.token_urlsafe(200),
                        "Expiration": stamp(now + self.a.lifetime),
                    },
                }
            return self.current["doc"]


def stamp(t):
    return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        if os.environ.get("CIDBOOT_TEST_IMDS_LOG"):
            super().log_message(*args)

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        st = self.server.st
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        if self.path != "/latest/api/token":
            return self.answer(404)
        if self.headers.get("X-Forwarded-For") is not None:
            return self.answer(403)
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        try:
            ttl = int(ttl)
        except (TypeError, ValueError):
            return self.answer(400)
        if not 1 <= ttl <= 21600:
            return self.answer(400)
        token = secrets.token_urlsafe(40)
        life = ttl if st.a.token_cap is None else min(ttl, st.a.token_cap)
        with st.lock:
            st.tokens[token] = time.time() + life
        self.answer(200, token.encode(), [("X-aws-ec2-metadata-token-ttl-seconds", str(ttl))])

    def do_GET(self):
        st = self.server.st
        token = self.headers.get("X-aws-ec2-metadata-token")
        with st.lock:
            valid = token is not None and st.tokens.get(token, 0) > time.time()
        if not valid:
            return self.answer(401)
        if self.path == PREFIX:
            return self.answer(200, st.a.role.encode())
        if self.path == PREFIX + st.a.role:
            return self.answer(200, json.dumps(st.credentials(), indent=2).encode())
        self.answer(404)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--role", default="enclave-parent")
    p.add_argument("--lifetime", type=float, default=6 * 3600)
    p.add_argument("--rotate-before", type=float, default=300)
    p.add_argument("--token-cap", type=float)
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.st = State(a)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1], "role": a.role}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

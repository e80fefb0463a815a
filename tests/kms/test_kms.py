"""A test AWS KMS for the enclave's attested calls, which only AWS answers: it does what AWS
documents for them, independently of cidboot's code.

    python test_kms.py --cert CERT --key KEY --root NSM_ROOT_PEM --policy STATEMENT_JSON \
        --principal ARN --access-key-id ID --secret-access-key SECRET [--region R] [--fault F]

Serves the KMS JSON API over TLS on 127.0.0.1 (a free port), prints one JSON line once it
listens ({"port": P, "region": R, "keys": [ARN]}), and serves until stdin closes.

For every request it:
- checks the SigV4 signature with botocore's signer (the AWS SDK for Python's), for the one
  access key it knows, this region and the service `kms`, and X-Amz-Date within 15 minutes;
  otherwise InvalidSignatureException or UnrecognizedClientException, as KMS answers;
- for a `Recipient`: verifies the attestation document (COSE_Sign1 ES384 over the payload as
  sent, the certificate chain from the pinned root, the software NSM's, to the leaf that signed
  it, each certificate valid now) and refuses RSAES_OAEP_SHA_256's absence or another
  algorithm;
- authorizes Decrypt and GenerateDataKey by the key policy statement it was given (the one
  `cidboot expect --kms-policy` prints): Effect, Principal, Action (with wildcards) and every
  condition (StringEquals and StringEqualsIgnoreCase, on the kms:RecipientAttestation:ImageSha384
  and kms:RecipientAttestation:PCR<n> keys, taken from the verified document's PCRs; a key
  the request does not carry fails its condition, as in IAM). Refused: an AccessDeniedException
  formatted as KMS formats it. Encrypt, GenerateDataKeyWithoutPlaintext and GenerateRandom are
  the caller's own permissions (an IAM policy, not the key policy) and are allowed to the
  known access key;
- answers a call with a `Recipient` with CiphertextForRecipient made by openssl cms
  (-encrypt -stream -keyid -binary -outform DER -aes-256-cbc, RSA-OAEP with SHA-256) to a
  certificate that wraps the document's public_key, and no Plaintext.

Ciphertexts are AES-256-GCM under the key's own random key, the encryption context as AAD,
so a ciphertext opens only with the context it was sealed with (InvalidCiphertextException).

The policy file is read again for every request, so that a test can write the statement
after the server (and so its key and port) exists; so is the root, so that it can be the one a
`cidboot run --nsm-root-out` writes when it starts.

--fault makes it misbehave for the client's failure paths: truncated-cfr (half of the
CiphertextForRecipient), with-plaintext (a Plaintext beside it), oversize (a 100 KiB answer),
stall (no answer at all).

--INSECURE-accept-unsigned-emulated-documents is for the emulated enclave only (QEMU's
nitro-enclave machine), whose NSM signs nothing: protected header {1: -1}, a zeroed signature,
a zeroed certificate and cabundle. In that mode a document of exactly that shape is taken
without its signature and chain (anything else is still verified as above), and its PCRs, which
QEMU computes for real (PCR0-2 as eif_build prints them, PCR16 as cidboot extends it), are
still evaluated against the statement. --root is then optional. Never point a real enclave at
it: it says so on stderr at start.
"""

import argparse
import base64
import datetime
import fnmatch
import hmac
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cbor2
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_REQUEST = 64 * 1024
ACCOUNT = "111122223333"


class KmsError(Exception):
    def __init__(self, code, message, status=400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class State:
    def __init__(self, a):
        self.a = a
        self.region = a.region
        key_id = str(uuid.uuid4())
        self.key_arn = f"arn:aws:kms:{a.region}:{ACCOUNT}:key/{key_id}"
        self.key_uuid = uuid.UUID(key_id).bytes
        self.key = AESGCM.generate_key(bit_length=256)
        self.work = tempfile.mkdtemp(prefix="cidboot-test-kms-")
        # The throwaway key that signs the certificates wrapping documents' public keys.
        self.signer = os.path.join(self.work, "signer.key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", self.signer)


def openssl(*args, stdin=None):
    r = subprocess.run(["openssl", *args], input=stdin, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr.decode(errors='replace')}")
    return r.stdout


# --- SigV4 -------------------------------------------------------------------------------

def check_signature(st, headers, body):
    auth = headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        raise KmsError("MissingAuthenticationTokenException", "Request is missing Authentication Token")
    fields = dict(
        part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(",")
    )
    cred = fields.get("Credential", "").split("/")
    signed = fields.get("SignedHeaders", "").split(";")
    if len(cred) != 5 or cred[0] != st.a.access_key_id:
        raise KmsError("UnrecognizedClientException", "The security token included in the request is invalid.")
    amz_date = headers.get("X-Amz-Date", "")
    _, day, region, service, term = cred
    if region != st.region or service != "kms" or term != "aws4_request" or day != amz_date[:8]:
        raise KmsError("InvalidSignatureException", f"Credential should be scoped to a valid region and service: {cred}")
    if "host" not in signed or "x-amz-date" not in signed:
        raise KmsError("InvalidSignatureException", "host and x-amz-date must be signed")
    when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 900:
        raise KmsError("InvalidSignatureException", "Signature expired")
    req = AWSRequest(
        method="POST",
        url=f"https://{headers['Host']}/",
        data=body,
        headers={h: headers[h] for h in signed if headers.get(h) is not None},
    )
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(st.a.access_key_id, st.a.secret_access_key), "kms", st.region)
    want = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
    if not hmac.compare_digest(want, fields.get("Signature", "")):
        raise KmsError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )


# --- The attestation document ---------------------------------------------------------------

def pinned_root(st):
    """The root certificate (DER), read from --root at every verification; None without one."""
    if not st.a.root:
        return None
    try:
        with open(st.a.root, "rb") as f:
            pem = f.read()
    except FileNotFoundError:
        return None
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def verify_document(st, raw):
    def bad(why):
        return KmsError("ValidationException", f"The attestation document does not verify: {why}")

    try:
        cose = cbor2.loads(raw)
    except Exception as e:
        raise bad(f"not CBOR: {e}")
    if isinstance(cose, cbor2.CBORTag):
        cose = cose.value
    if not isinstance(cose, list) or len(cose) != 4:
        raise bad("not a COSE_Sign1")
    protected, _unprotected, payload, signature = cose
    doc = cbor2.loads(payload)
    if st.a.INSECURE_accept_unsigned_emulated_documents and emulated_unsigned(cbor2.loads(protected), doc, signature):
        if doc.get("public_key") is None or not isinstance(doc.get("pcrs"), dict):
            raise bad("no public_key or pcrs")
        return doc
    if cbor2.loads(protected).get(1) != -35:
        raise bad("not ES384")
    root_der = pinned_root(st)
    if root_der is None:
        raise bad(f"no root to verify it against (--root {st.a.root or ''}: none)")
    for k in ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key"):
        if doc.get(k) is None:
            raise bad(f"no {k}")
    if doc["digest"] != "SHA384":
        raise bad("digest is not SHA384")
    if not doc["cabundle"] or doc["cabundle"][0] != root_der:
        raise bad("the chain does not start at the pinned root")
    chain = [x509.load_der_x509_certificate(c) for c in doc["cabundle"]]
    chain.append(x509.load_der_x509_certificate(doc["certificate"]))
    now = datetime.datetime.now(datetime.timezone.utc)
    for c in chain:
        if not (c.not_valid_before_utc <= now <= c.not_valid_after_utc):
            raise bad(f"{c.subject.rfc4514_string()} is not valid now")
    for issuer, cert in zip(chain, chain[1:]):
        try:
            if not issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise bad(f"{issuer.subject.rfc4514_string()} is not a CA")
            cert.verify_directly_issued_by(issuer)
        except KmsError:
            raise
        except Exception as e:
            raise bad(f"{cert.subject.rfc4514_string()} is not issued by {issuer.subject.rfc4514_string()}: {e}")
    if len(signature) != 96:
        raise bad("the signature is not 96 bytes")
    der = utils.encode_dss_signature(int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big"))
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    try:
        chain[-1].public_key().verify(der, to_sign, ec.ECDSA(hashes.SHA384()))
    except Exception:
        raise bad("the COSE signature does not verify with the leaf certificate")
    return doc


def emulated_unsigned(protected, doc, signature):
    """Exactly what QEMU's emulated NSM sends: algorithm -1, and zeros where a signature, the
    certificate and the CA bundle would be."""
    zero = lambda b: isinstance(b, bytes) and len(b) > 0 and not any(b)
    return (
        protected == {1: -1}
        and zero(signature)
        and zero(doc.get("certificate"))
        and isinstance(doc.get("cabundle"), list)
        and len(doc["cabundle"]) == 1
        and zero(doc["cabundle"][0])
    )


def recipient_document(st, params):
    r = params.get("Recipient")
    if r is None:
        return None
    if r.get("KeyEncryptionAlgorithm") != "RSAES_OAEP_SHA_256":
        raise KmsError("ValidationException", "KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256")
    return verify_document(st, base64.b64decode(r.get("AttestationDocument", "")))


def for_recipient(st, doc, plaintext):
    """CiphertextForRecipient: openssl cms to a certificate over the document's public key."""
    d = tempfile.mkdtemp(dir=st.work)
    pub = os.path.join(d, "pub.pem")
    cert = os.path.join(d, "cert.pem")
    ext = os.path.join(d, "ext.cnf")
    openssl("pkey", "-pubin", "-inform", "DER", "-out", pub, stdin=doc["public_key"])
    with open(ext, "w") as f:
        f.write("subjectKeyIdentifier=hash\nbasicConstraints=critical,CA:FALSE\nkeyUsage=keyEncipherment\n")
    openssl("x509", "-new", "-key", st.signer, "-force_pubkey", pub, "-subj", "/CN=recipient",
            "-days", "1", "-extfile", ext, "-out", cert)
    out = openssl("cms", "-encrypt", "-stream", "-keyid", "-binary", "-outform", "DER", "-aes-256-cbc",
                  "-recip", cert, "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
                  stdin=plaintext)
    if st.a.fault == "truncated-cfr":
        out = out[: len(out) // 2]
    return out


# --- The key policy -----------------------------------------------------------------------

def context_value(key, doc):
    prefix = "kms:recipientattestation:"
    if doc is None or not key.lower().startswith(prefix):
        return None
    name = key[len(prefix):]
    index = 0 if name.lower() == "imagesha384" else (int(name[3:]) if name.upper().startswith("PCR") else None)
    v = None if index is None else doc["pcrs"].get(index)
    return None if v is None else v.hex()


def allowed(st, principal, action, doc):
    with open(st.a.policy) as f:
        s = json.load(f)
    if s.get("Effect") != "Allow":
        return False
    p = s.get("Principal", {}).get("AWS")
    principals = p if isinstance(p, list) else [p]
    if principal not in principals and "*" not in principals:
        return False
    actions = s.get("Action")
    actions = actions if isinstance(actions, list) else [actions]
    if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
        return False
    for op, conditions in s.get("Condition", {}).items():
        if op not in ("StringEquals", "StringEqualsIgnoreCase"):
            raise RuntimeError(f"the test KMS does not evaluate {op}")
        for key, want in conditions.items():
            have = context_value(key, doc)
            wants = want if isinstance(want, list) else [want]
            if have is None:
                return False
            if op == "StringEqualsIgnoreCase":
                ok = any(have.lower() == w.lower() for w in wants)
            else:
                ok = have in wants
            if not ok:
                return False
    return True


def authorize(st, action, doc):
    if not allowed(st, st.a.principal, action, doc):
        raise KmsError(
            "AccessDeniedException",
            f"User: {st.a.principal} is not authorized to perform: {action} on resource: "
            f"{st.key_arn} because no resource-based policy allows the {action} action",
        )


# --- The operations -------------------------------------------------------------------------

def aad(context):
    return json.dumps(context or {}, sort_keys=True, separators=(",", ":")).encode()


def check_key(st, key_id):
    if key_id is None:
        return
    if key_id not in (st.key_arn, st.key_arn.split("/")[-1]):
        raise KmsError("NotFoundException", f"Key '{key_id}' does not exist")


def seal(st, plaintext, context):
    nonce = os.urandom(12)
    return st.key_uuid + nonce + AESGCM(st.key).encrypt(nonce, plaintext, aad(context))


def unseal(st, blob, context):
    if len(blob) < 16 + 12 + 16 or blob[:16] != st.key_uuid:
        raise KmsError("InvalidCiphertextException", "")
    try:
        return AESGCM(st.key).decrypt(blob[16:28], blob[28:], aad(context))
    except Exception:
        raise KmsError("InvalidCiphertextException", "")


def count(params, key_spec=False):
    """NumberOfBytes, or for GenerateDataKey a KeySpec instead (AES_256: 32, AES_128: 16)."""
    spec = params.get("KeySpec") if key_spec else None
    if spec is not None:
        if params.get("NumberOfBytes") is not None:
            raise KmsError("ValidationException", "KeySpec and NumberOfBytes are mutually exclusive")
        if spec not in ("AES_256", "AES_128"):
            raise KmsError("ValidationException", f"KeySpec {spec!r} must be AES_256 or AES_128")
        return 32 if spec == "AES_256" else 16
    n = params.get("NumberOfBytes")
    if not isinstance(n, int) or not 1 <= n <= 1024:
        raise KmsError("ValidationException", f"NumberOfBytes {n!r} must be 1..1024")
    return n


def answer(st, doc, fields, plaintext, empty=None):
    """The plaintext, or for a Recipient CiphertextForRecipient and a Plaintext that is null (or
    empty, as `empty` says: AWS documents "null or empty")."""
    if doc is None:
        fields["Plaintext"] = base64.b64encode(plaintext).decode()
    else:
        fields["CiphertextForRecipient"] = base64.b64encode(for_recipient(st, doc, plaintext)).decode()
        fields["Plaintext"] = empty
        if st.a.fault == "with-plaintext":
            fields["Plaintext"] = base64.b64encode(plaintext).decode()
    return fields


def operate(st, op, params):
    context = params.get("EncryptionContext")
    if op == "Encrypt":
        check_key(st, params.get("KeyId"))
        blob = seal(st, base64.b64decode(params["Plaintext"]), context)
        return {"CiphertextBlob": base64.b64encode(blob).decode(), "KeyId": st.key_arn,
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    if op == "GenerateDataKeyWithoutPlaintext":
        check_key(st, params.get("KeyId"))
        blob = seal(st, os.urandom(count(params)), context)
        return {"CiphertextBlob": base64.b64encode(blob).decode(), "KeyId": st.key_arn}
    if op == "Decrypt":
        check_key(st, params.get("KeyId"))
        doc = recipient_document(st, params)
        authorize(st, "kms:Decrypt", doc)
        plaintext = unseal(st, base64.b64decode(params["CiphertextBlob"]), context)
        return answer(st, doc, {"KeyId": st.key_arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}, plaintext)
    if op == "GenerateDataKey":
        check_key(st, params.get("KeyId"))
        doc = recipient_document(st, params)
        authorize(st, "kms:GenerateDataKey", doc)
        key = os.urandom(count(params, key_spec=True))
        blob = seal(st, key, context)
        return answer(st, doc, {"KeyId": st.key_arn, "CiphertextBlob": base64.b64encode(blob).decode()}, key)
    if op == "GenerateRandom":
        doc = recipient_document(st, params)
        return answer(st, doc, {}, os.urandom(count(params)), empty="")
    raise KmsError("UnknownOperationException", f"{op} is not served here", 400)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        if os.environ.get("CIDBOOT_TEST_KMS_LOG"):
            super().log_message(*args)

    def reply(self, status, fields):
        body = json.dumps(fields).encode()
        if self.server.st.a.fault == "oversize":
            body = json.dumps({**fields, "Padding": "x" * (100 * 1024)}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        st = self.server.st
        try:
            n = int(self.headers.get("Content-Length", "0"))
            if n > MAX_REQUEST:
                raise KmsError("ValidationException", "request too large")
            body = self.rfile.read(n)
            if st.a.fault == "stall":
                time.sleep(3600)
            check_signature(st, self.headers, body)
            target = self.headers.get("X-Amz-Target", "")
            if not target.startswith("TrentService."):
                raise KmsError("UnknownOperationException", target)
            if self.headers.get("Content-Type") != "application/x-amz-json-1.1":
                raise KmsError("SerializationException", "Content-Type")
            self.reply(200, operate(st, target[len("TrentService."):], json.loads(body)))
        except KmsError as e:
            self.reply(e.status, {"__type": e.code, "message": e.message})
        except Exception as e:  # a bug in this server: say so to the client, loudly
            print(f"test KMS: {e!r}", file=sys.stderr, flush=True)
            self.reply(500, {"__type": "KMSInternalException", "message": repr(e)})


def main():
    p = argparse.ArgumentParser()
    for k in ("--cert", "--key", "--policy", "--principal", "--access-key-id", "--secret-access-key"):
        p.add_argument(k, required=True)
    p.add_argument("--root")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--INSECURE-accept-unsigned-emulated-documents", action="store_true")
    p.add_argument("--fault", choices=["truncated-cfr", "with-plaintext", "oversize", "stall"])
    a = p.parse_args()
    if a.INSECURE_accept_unsigned_emulated_documents:
        print("test KMS: INSECURE: accepting the UNSIGNED attestation documents of an emulated enclave", file=sys.stderr, flush=True)
    elif not a.root:
        p.error("--root is required (unless --INSECURE-accept-unsigned-emulated-documents)")
    st = State(a)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.st = st
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1], "region": a.region, "keys": [st.key_arn]}), flush=True)
    # The test holds stdin open; when it goes away (the test ended, or died), so does this,
    # and so does it on SIGTERM (the end-to-end script's clean-up): nothing is left in /tmp.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sys.stdin.read()
    finally:
        shutil.rmtree(st.work, ignore_errors=True)


if __name__ == "__main__":
    main()

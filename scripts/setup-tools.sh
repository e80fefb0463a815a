#!/usr/bin/env bash
# Installs the tools the tests use, once, behind stamps outside the repository:
#   - ipfs-car (npm), the independent CAR packer the tests compare against;
#   - ipfs-unixfs-importer (npm), Helia's UnixFS importer, which `pack --profile` is compared
#     against (about 60 small packages, 11 MB, a few seconds);
#   - @helia/car and Helia's blockstore (npm), which the test IPFS node is built on;
#   - cargo-deny, which checks the dependency policy;
#   - buildah (apt), which builds the EIF image and the sleeve in the end-to-end test;
#   - redis-server, redis-tools and curl (apt), the raw TCP service, its client and the HTTPS
#     client the transparent egress tests put into a workload that has no proxy settings;
#   - moto (PyPI, in a venv), the independent AWS KMS the KMS client and `seal` are tested
#     against, and cbor2 for the test KMS that answers the enclave's attested calls (the tests
#     run $CIDBOOT_MOTO_PYTHON, by default the venv's python);
#   - the AWS CLI (PyPI, in the same venv, beside that python), which runs the `aws kms`
#     examples of docs/ against the KMS proxy.
# Override the cache with CIDBOOT_CACHE (default ~/.cache/cidboot).
set -euo pipefail
cache=${CIDBOOT_CACHE:-$HOME/.cache/cidboot}
IPFS_CAR_VERSION=3.1.0

# Each step is recorded as done (its stamp, or the program it installs) only once it succeeded:
# a run that failed half-way is repaired by the next one.
need_apt=()
# A package dpkg left half-installed or half-configured (an interrupted install) is installed
# again, even though its program may already be there.
half_installed() {
  local s
  s=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) || return 1
  [ "${s:0:1}" = i ] && [ "$s" != "ii " ]
}
need() { # $1: a program, $2: the Debian package that has it
  if ! command -v "$1" >/dev/null || half_installed "$2"; then need_apt+=("$2"); fi
}
need node nodejs
need npm npm
need gzip gzip
need umoci umoci
need skopeo skopeo
need buildah buildah
need openssl openssl
need curl curl
need redis-server redis-server
need redis-cli redis-tools
need python3 python3
# Debian's python3 makes venvs only with python3-venv (ensurepip).
if ! python3 -c 'import ensurepip, venv' 2>/dev/null || half_installed python3-venv; then need_apt+=(python3-venv); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  # An install that dpkg left unfinished blocks every later one until it is completed.
  [ -z "$(dpkg --audit 2>/dev/null)" ] || dpkg --configure -a >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# cargo-deny, for the dependency policy in deny.toml.
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  echo "setup: installing cargo-deny $CARGO_DENY_VERSION" >&2
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION" >&2
fi

# moto and cbor2, in a venv of their own under the cache ($cache/moto/bin/python, or
# CIDBOOT_MOTO_PYTHON).
MOTO_VERSION=5.2.6
CBOR2_VERSION=5.6.5
moto_venv="$cache/moto"
moto_stamp="$moto_venv/.moto-$MOTO_VERSION-cbor2-$CBOR2_VERSION"
if [ ! -f "$moto_stamp" ] || [ ! -x "$moto_venv/bin/python" ]; then
  echo "setup: installing moto[server]==$MOTO_VERSION and cbor2==$CBOR2_VERSION into $moto_venv" >&2
  rm -rf "$moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install --quiet --disable-pip-version-check \
    "moto[server]==$MOTO_VERSION" "cbor2==$CBOR2_VERSION" >&2
  touch "$moto_stamp"
fi
# The AWS CLI v1 carries its own botocore, so it leaves moto's alone; a stamp of its own, so
# that adding it does not rebuild the venv (about 20 MB, a few seconds).
AWSCLI_VERSION=1.46.3
awscli_stamp="$moto_venv/.awscli-$AWSCLI_VERSION"
if [ ! -f "$awscli_stamp" ] || [ ! -x "$moto_venv/bin/aws" ]; then
  echo "setup: installing awscli==$AWSCLI_VERSION into $moto_venv" >&2
  "$moto_venv/bin/pip" install --quiet --disable-pip-version-check "awscli==$AWSCLI_VERSION" >&2
  touch "$awscli_stamp"
fi

tools="$cache/tools"
stamp="$tools/.ipfs-car-$IPFS_CAR_VERSION"
if [ ! -f "$stamp" ] || [ ! -x "$tools/node_modules/.bin/ipfs-car" ]; then
  echo "setup: installing ipfs-car@$IPFS_CAR_VERSION into $tools" >&2
  mkdir -p "$tools"
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "ipfs-car@$IPFS_CAR_VERSION" >&2
  touch "$stamp"
fi
# Helia's importer, in a prefix of its own so that it and ipfs-car keep their own dependencies.
UNIXFS_IMPORTER_VERSION=17.1.1
importer="$tools/unixfs-importer"
importer_stamp="$importer/.ipfs-unixfs-importer-$UNIXFS_IMPORTER_VERSION"
if [ ! -f "$importer_stamp" ] || [ ! -f "$importer/node_modules/ipfs-unixfs-importer/dist/src/index.js" ]; then
  echo "setup: installing ipfs-unixfs-importer@$UNIXFS_IMPORTER_VERSION into $importer" >&2
  mkdir -p "$importer"
  npm install --prefix "$importer" --no-audit --no-fund --loglevel=error \
    "ipfs-unixfs-importer@$UNIXFS_IMPORTER_VERSION" >&2
  touch "$importer_stamp"
fi
# Helia's CAR import and export over Helia's blockstore, which the test IPFS node
# (tests/publish/helia_node.mjs) is built on: dag/import, the Pinning Service API and a
# trustless gateway (75 small packages, 19 MB, about 10 seconds). Helia's libp2p node is
# left out (150 MB more): the test node has no networking.
HELIA_PACKAGES=(@helia/car@6.0.5 blockstore-core@7.0.1 @ipld/car@5.4.7 @ipld/dag-pb@4.2.0
  @ipld/dag-cbor@10.0.2 multiformats@14.0.5 @libp2p/logger@6.2.13)
helia="$tools/helia"
# The stamp names every pinned version: changing one installs them again.
helia_stamp="$helia/.helia-$(echo "${HELIA_PACKAGES[*]}" | sha256sum | cut -c1-16)"
if [ ! -f "$helia_stamp" ] || [ ! -f "$helia/node_modules/@helia/car/package.json" ]; then
  echo "setup: installing ${HELIA_PACKAGES[*]} into $helia" >&2
  mkdir -p "$helia"
  npm install --prefix "$helia" --no-audit --no-fund --loglevel=error "${HELIA_PACKAGES[@]}" >&2
  touch "$helia_stamp"
fi
echo "$tools/node_modules/.bin/ipfs-car"

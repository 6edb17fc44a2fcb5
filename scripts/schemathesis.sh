#!/usr/bin/env bash
# Fuzzes a running api with schemathesis against the checked-in docs/openapi.json: no 5xx,
# no request the document calls invalid accepted, and every answer's status, content type
# and body as the document says. Schemathesis comes from PyPI into a git-ignored venv
# under .tools/ (made on first use). The e2e test e2e/tests/openapi_fuzz.rs, part of
# `make test`, starts a pool and runs this against it.
# Usage: scripts/schemathesis.sh --install-only | BASE_URL [extra schemathesis args]
#   SCHEMATHESIS_MAX_EXAMPLES (default 30): examples per operation; SCHEMATHESIS_SEED
#   (default 1): the seed, fixed so that a failure can be reproduced.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=4.32.5
venv="$root/.tools/schemathesis-$version"

# `complete` is written last, so an interrupted install is started again, not taken for done.
if [ ! -f "$venv/complete" ]; then
  echo "schemathesis: installing schemathesis $version into $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    echo "schemathesis: installing python3-venv" >&2
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
  touch "$venv/complete"
fi

case "${1:-}" in
  --install-only) exit 0 ;;
  "" | -*) echo "usage: scripts/schemathesis.sh --install-only | BASE_URL [schemathesis args]" >&2; exit 2 ;;
esac
base_url=$1
shift

# Schemathesis caches the failures it found in its working directory: run it in the venv,
# out of the tree.
cd "$venv"
exec "$venv/bin/schemathesis" run "$root/docs/openapi.json" \
  --url "$base_url" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  "$@"

#!/usr/bin/env bash
# Installs MLServer 1.7.1 (+ the sklearn runtime) into a virtualenv for coscale's
# `serverConfig: mlserver` servers and the MLServer end-to-end test.
#
# Usage: .ci/install-mlserver.sh [VENV]   (default: .venv-mlserver in the repo root)
# Idempotent: does nothing when the pinned versions are already installed.
# Prints the path of the mlserver executable on stdout (everything else on stderr).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-mlserver}"
python="${PYTHON:-python3}"

want_mlserver=1.7.1
want_sklearn_rt=1.7.1

installed() {
  [ -x "$venv/bin/mlserver" ] && [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "$want_mlserver" "$want_sklearn_rt" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
ok = (version("mlserver") == sys.argv[1]
      and version("mlserver-sklearn") == sys.argv[2]
      and tuple(int(p) for p in version("uvloop").split(".")[:2]) < (0, 22))
sys.exit(0 if ok else 1)
PY
}

if installed; then
  echo "mlserver $want_mlserver already installed in $venv" >&2
else
  echo "installing mlserver $want_mlserver into $venv (about a minute)" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "mlserver==$want_mlserver" "mlserver-sklearn==$want_sklearn_rt" 'uvloop<0.22' >&2
  installed || { echo "error: mlserver install in $venv did not produce the pinned versions" >&2; exit 1; }
fi
echo "$venv/bin/mlserver"

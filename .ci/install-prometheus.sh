#!/usr/bin/env bash
# Installs the Prometheus server (Debian/Ubuntu package) for the HPA end-to-end test
# (`crates/coscale-cli/tests/hpa_prometheus.rs`), which starts it on 127.0.0.1.
#
# Usage: .ci/install-prometheus.sh
# Idempotent: does nothing when `prometheus` is already on PATH.
# Prints the path of the prometheus executable on stdout (everything else on stderr).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  echo "prometheus already installed: $(prometheus --version 2>&1 | head -n1)" >&2
else
  sudo_cmd=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
    sudo_cmd="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update >&2
  $sudo_cmd apt-get install -y --no-install-recommends prometheus >&2
  # The package's service is not wanted: the test runs its own instance.
  if command -v systemctl >/dev/null 2>&1; then
    $sudo_cmd systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
command -v prometheus

#!/usr/bin/env bash
# Installs the Debian packages that training and the tests need, when they are missing.
#   dataset-fashion-mnist  Fashion-MNIST IDX files for fashion-cnn (/usr/share/datasets/fashion-mnist)
#   prometheus             `prometheus` and `promtool` for tests/test_deploy*.py (the tests run their
#                          own Prometheus on a free loopback port, never the packaged service)
#   postgresql             initdb/pg_ctl for the PostgreSQL prediction-log tests (their own server)
#   chromium               headless Chromium for the web console's browser test (Playwright drives
#                          /usr/bin/chromium; no browser is downloaded)
#   iproute2               `ip netns` / veth: tests/training/test_distributed.py's two hosts on one
#                          machine (torchrun across two network namespaces)
# Needs root (or sudo) and apt-get; elsewhere it says what to install and carries on.
# Not from Debian: kubectl 1.21+ (its built-in kustomize renders deploy/kubernetes; bookworm's
# kubernetes-client is 1.20, too old for kustomize components): these machines have it.
set -euo pipefail
command -v kubectl >/dev/null ||
  echo "system-packages: kubectl not found: the Kubernetes manifest tests need kubectl 1.21+" >&2
packages=(dataset-fashion-mnist prometheus postgresql chromium iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system-packages: please install ${missing[*]} (no apt-get here)" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "system-packages: please run: sudo apt-get install ${missing[*]}" >&2
    exit 0
  fi
fi
echo "system-packages: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

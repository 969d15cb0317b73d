#!/usr/bin/env bash
# Prepare a fresh Debian machine (as root) for cilia's demo and test suite. Idempotent: it only
# installs what is missing. Creates/updates ./.venv with cilia and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(python3-bpfcc bpfcc-tools bpftool linux-headers-amd64 iproute2 curl nftables git make openssl
                 zsh chromium chromium-driver)  # zsh: completion tests; chromium: the admin page test (headless)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages (${missing[*]}); run as root to install them" >&2
  else
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# bcc compiles against kernel headers found at /lib/modules/$(uname -r)/{build,source}. Debian's
# headers for its own kernel serve for the running one when none for it exist.
kdir="/lib/modules/$(uname -r)"
if [ "$(id -u)" -eq 0 ] && [ ! -e "$kdir/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$hdr" ] && [ -n "$common" ]; then
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.cilia-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
# xds-protos and opentelemetry-proto both ship `opentelemetry/proto`; the OTLP exporter needs the latter's.
if ! .venv/bin/python -c 'from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2; trace_pb2.Span.DESCRIPTOR.fields_by_name["flags"]' \
    >/dev/null 2>&1; then
  echo "setup: reinstalling opentelemetry-proto over the copy in xds-protos"
  .venv/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps opentelemetry-proto
fi

# Debian's bcc Python bindings live outside the venv; expose only that package to it.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
  mkdir -p .venv/bcc-shim
  ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bcc-shim/bcc
  echo "$(pwd)/.venv/bcc-shim" > "$site/cilia-bcc.pth"
fi
# A real Kubernetes control plane for tests/kube: etcd, kube-apiserver, kube-controller-manager and kubectl,
# built once from Go modules into ~/.cache/cilia (about 10 minutes cold on 2 cores; instant afterwards).
bash scripts/local-cluster.sh build >/dev/null
# helm for the chart tests (deploy/helm/cilia), built the same way (about 3 minutes cold).
bash scripts/helm.sh >/dev/null
echo "setup: ready (.venv)"

#!/usr/bin/env bash
# helm for the chart tests (deploy/helm/cilia): built once from Go modules and cached outside the clone,
# as scripts/local-cluster.sh does for the Kubernetes binaries (Debian has no helm package).
#
#   scripts/helm.sh          build (or find) helm; prints its path
#
# Environment: CILIA_CACHE (default ~/.cache/cilia), HELM_VERSION (default v4.3.2). The binary lands in
# $CILIA_CACHE/helm-$HELM_VERSION/bin/helm. Cold build: about 3 minutes on 2 cores (more under load).
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v4.3.2}
CACHE=${CILIA_CACHE:-$HOME/.cache/cilia}
BIN="$CACHE/helm-$HELM_VERSION/bin"
export GOFLAGS=${GOFLAGS:--buildvcs=false}
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

if [ -x "$BIN/helm" ]; then
  echo "$BIN/helm"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "helm.sh: installing golang-go" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >/dev/null
  fi
fi
command -v go >/dev/null 2>&1 || { echo "helm.sh: a Go toolchain is needed to build helm" >&2; exit 1; }
mkdir -p "$BIN"
t0=$SECONDS
GOBIN="$BIN" go install -trimpath -ldflags '-s -w' "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
echo "helm.sh: built helm $HELM_VERSION in $((SECONDS - t0)) s into $BIN" >&2
echo "$BIN/helm"

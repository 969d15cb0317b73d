#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for tests and local trials: etcd, kube-apiserver and
# kube-controller-manager, built once from Go modules and cached outside the clone.
#
#   scripts/local-cluster.sh build          build (or find) the binaries; prints their folder
#   scripts/local-cluster.sh up DIR         start a fresh cluster whose state lives in DIR;
#                                           writes DIR/kubeconfig (admin) and DIR/env
#   scripts/local-cluster.sh gateway-crds   fetch (or find) the Gateway API CRDs; prints their folder
#                                           (standard/ and experimental/, each a kustomization)
#   scripts/local-cluster.sh env DIR        print `export KUBECONFIG=...` lines for that cluster
#   scripts/local-cluster.sh restart-apiserver DIR
#                                           stop kube-apiserver and start it again with the same
#                                           arguments (DIR/apiserver.args); waits until it is ready
#   scripts/local-cluster.sh down DIR       stop everything `up` started and remove DIR's data
#
# Environment: CILIA_CACHE (default ~/.cache/cilia), KUBE_VERSION (default v1.37.2),
# ETCD_VERSION (default v3.7.3), GATEWAY_API_VERSION (default v1.5.1, the conformance target). The binaries land in
# $CILIA_CACHE/kube-$KUBE_VERSION/bin, the Gateway API CRDs in $CILIA_CACHE/gateway-api-$GATEWAY_API_VERSION.
# Cold build: about 10 minutes on 2 cores, ~5 GB of Go caches (module + build cache) and ~314 MB of
# binaries; later runs reuse them, and `up` takes about 4 s.
# Everything listens on 127.0.0.1 only; the ports are picked free at `up` time.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
CACHE=${CILIA_CACHE:-$HOME/.cache/cilia}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.5.1}
BIN="$CACHE/kube-$KUBE_VERSION/bin"
export GOFLAGS=${GOFLAGS:--buildvcs=false}
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

die() { echo "local-cluster: $*" >&2; exit 1; }

ensure_go() {
  if command -v go >/dev/null 2>&1; then return; fi
  if [ -x /usr/local/go/bin/go ]; then export PATH="/usr/local/go/bin:$PATH"; return; fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "local-cluster: installing golang-go" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >/dev/null
  fi
  command -v go >/dev/null 2>&1 || die "a Go toolchain is needed to build the control plane"
}

build_kube() {
  # k8s.io/kubernetes replaces its staging modules with ./staging paths, so `go install` refuses it.
  # A wrapper module requires it and points each staging module at its published v0.x twin.
  local minor=${KUBE_VERSION#v1.}
  local staging="v0.$minor"
  local work="$CACHE/kube-$KUBE_VERSION/src"
  mkdir -p "$work" "$BIN"
  (
    cd "$work"
    if [ ! -f go.mod ]; then
      cat >go.mod <<EOF
module cilia.local/kubebuild

go 1.26
EOF
      cat >tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
      go mod download "k8s.io/kubernetes@$KUBE_VERSION"
      local gomod
      gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
      [ -f "$gomod" ] || die "cannot read k8s.io/kubernetes@$KUBE_VERSION's go.mod"
      local mods
      mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._/-]*\) => \./staging/.*#\1#p' "$gomod" | sort -u)
      [ -n "$mods" ] || die "no staging modules found in $gomod"
      {
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        echo "replace ("
        for m in $mods; do echo "	$m => $m $staging"; done
        echo ")"
      } >>go.mod
      go mod tidy -e >/dev/null 2>&1 || true
      go get "k8s.io/kubernetes@$KUBE_VERSION"
    fi
    go build -trimpath -ldflags '-s -w' -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
  )
}

build_etcd() {
  local work="$CACHE/etcd-$ETCD_VERSION/src"
  mkdir -p "$work" "$BIN"
  (
    cd "$work"
    if [ ! -f go.mod ]; then
      cat >go.mod <<EOF
module cilia.local/etcdbuild

go 1.26
EOF
      cat >main.go <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
      go mod tidy
    fi
    go build -trimpath -ldflags '-s -w' -o "$BIN/etcd" .
  )
}

cmd_gateway_crds() {
  # The CRDs ship inside the sigs.k8s.io/gateway-api Go module (config/crd), so the module proxy has them.
  local out="$CACHE/gateway-api-$GATEWAY_API_VERSION"
  if [ ! -f "$out/experimental/kustomization.yaml" ]; then
    ensure_go
    local tmp dir
    tmp=$(mktemp -d)
    dir=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" |
      sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    rmdir "$tmp"
    [ -f "$dir/config/crd/experimental/kustomization.yaml" ] || die "no CRDs in sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
    mkdir -p "$out"
    cp -r "$dir/config/crd/standard" "$dir/config/crd/experimental" "$out/"
    chmod -R u+w "$out"
  fi
  echo "$out"
}

cmd_build() {
  if [ -x "$BIN/etcd" ] && [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/kubectl" ] &&
     [ -f "$CACHE/gateway-api-$GATEWAY_API_VERSION/experimental/kustomization.yaml" ]; then
    echo "$BIN"; return
  fi
  ensure_go
  local t0=$SECONDS
  [ -x "$BIN/etcd" ] || build_etcd
  if [ ! -x "$BIN/kube-apiserver" ] || [ ! -x "$BIN/kube-controller-manager" ] || [ ! -x "$BIN/kubectl" ]; then
    build_kube
  fi
  cmd_gateway_crds >/dev/null
  echo "local-cluster: built in $((SECONDS - t0)) s into $BIN ($(du -sh "$BIN" | cut -f1))" >&2
  echo "$BIN"
}

free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 < limit )) || return 1
    sleep 0.2
  done
}

cmd_up() {
  local dir=${1:?usage: local-cluster.sh up DIR}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/pids" ] && die "$dir already holds a running cluster (run down first)"
  cmd_build >/dev/null
  command -v openssl >/dev/null 2>&1 || die "openssl is needed"
  local pki="$dir/pki"
  mkdir -p "$pki" "$dir/etcd" "$dir/logs"
  chmod 700 "$pki"

  # Certificates: one CA for serving and client certs; a separate key pair signs ServiceAccount tokens.
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=cilia-local-cluster-ca" -days 3 -out "$pki/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/apiserver.key" 2>/dev/null
  openssl req -new -key "$pki/apiserver.key" -subj "/CN=kube-apiserver" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.96.0.1\nextendedKeyUsage=serverAuth\n' >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local token
  token=$(openssl rand -hex 24)
  printf '%s,admin,admin,system:masters\n' "$token" >"$pki/tokens.csv"
  chmod 600 "$pki"/*.key "$pki/tokens.csv"

  local etcd_port etcd_peer api_port kcm_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port); kcm_port=$(free_port)

  # Audit log (DIR/logs/audit.log) of every write, and of every request cilia's ServiceAccount makes:
  # who, which verb, which object, which answer. Tests read it to count requests by client.
  cat >"$dir/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  users: ["system:serviceaccount:cilia-system:cilia"]
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF

  : >"$dir/pids"
  setsid "$BIN/etcd" --name local --data-dir "$dir/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer" --log-level warn \
    --quota-backend-bytes 1073741824 >"$dir/logs/etcd.log" 2>&1 </dev/null &
  echo "etcd $!" >>"$dir/pids"

  cat >"$dir/apiserver.args" <<EOF
--bind-address=127.0.0.1
--advertise-address=127.0.0.1
--secure-port=$api_port
--etcd-servers=http://127.0.0.1:$etcd_port
--endpoint-reconciler-type=none
--service-cluster-ip-range=127.96.0.0/16
--authorization-mode=Node,RBAC
--token-auth-file=$pki/tokens.csv
--client-ca-file=$pki/ca.crt
--tls-cert-file=$pki/apiserver.crt
--tls-private-key-file=$pki/apiserver.key
--service-account-issuer=https://kubernetes.default.svc
--service-account-key-file=$pki/sa.pub
--service-account-signing-key-file=$pki/sa.key
--api-audiences=https://kubernetes.default.svc
--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook
--allow-privileged=true
--watch-cache=true
--audit-policy-file=$dir/audit-policy.yaml
--audit-log-path=$dir/logs/audit.log
--audit-log-format=json
--v=1
EOF
  start_apiserver "$dir"

  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
EOF
  chmod 600 "$dir/kubeconfig"
  cat >"$dir/env" <<EOF
export KUBECONFIG=$dir/kubeconfig
export PATH=$BIN:\$PATH
ETCD_ENDPOINT=http://127.0.0.1:$etcd_port
APISERVER=https://127.0.0.1:$api_port
EOF

  if ! wait_for 60 "kube-apiserver" "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz; then
    tail -n 30 "$dir/logs/kube-apiserver.log" >&2 || true
    cmd_down "$dir"
    die "kube-apiserver did not become ready"
  fi

  setsid "$BIN/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
    --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --controllers endpointslice,endpointslicemirroring,namespace,serviceaccount,serviceaccount-token,garbagecollector \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=false --concurrent-service-endpoint-syncs 5 \
    --v=1 >"$dir/logs/kube-controller-manager.log" 2>&1 </dev/null &
  echo "kube-controller-manager $!" >>"$dir/pids"

  # The default ServiceAccount appearing says the controller manager is working.
  if ! wait_for 60 "default ServiceAccount" "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get serviceaccount default -n default; then
    tail -n 30 "$dir/logs/kube-controller-manager.log" >&2 || true
    cmd_down "$dir"
    die "kube-controller-manager did not create the default ServiceAccount"
  fi
  echo "local-cluster: up at https://127.0.0.1:$api_port; export KUBECONFIG=$dir/kubeconfig" >&2
}

start_apiserver() {
  local dir=$1
  local args=()
  mapfile -t args <"$dir/apiserver.args"
  setsid "$BIN/kube-apiserver" "${args[@]}" >>"$dir/logs/kube-apiserver.log" 2>&1 </dev/null &
  echo "kube-apiserver $!" >>"$dir/pids"
}

stop_pid() {  # stop_pid PID [SECONDS=10]: TERM, then KILL after SECONDS
  local pid=$1 limit=${2:-10}
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 $((limit * 5))); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_restart_apiserver() {
  local dir=${1:?usage: local-cluster.sh restart-apiserver DIR}
  [ -f "$dir/pids" ] || die "no cluster in $dir"
  dir=$(cd "$dir" && pwd)
  local n pid keep
  keep=$(mktemp)
  while read -r n pid; do
    # It stops listening at once but may take ~10 s to exit; what matters here is that it is gone.
    if [ "$n" = kube-apiserver ]; then stop_pid "$pid" 2; else echo "$n $pid" >>"$keep"; fi
  done <"$dir/pids"
  mv "$keep" "$dir/pids"
  start_apiserver "$dir"
  if ! wait_for 60 "kube-apiserver" "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz; then
    tail -n 30 "$dir/logs/kube-apiserver.log" >&2 || true
    die "kube-apiserver did not become ready after a restart"
  fi
}

cmd_down() {
  local dir=${1:?usage: local-cluster.sh down DIR}
  [ -d "$dir" ] || return 0
  if [ -f "$dir/pids" ]; then
    # The API server hangs on shutdown without etcd: stop it (and the controller manager) first.
    local name pid
    for name in kube-controller-manager kube-apiserver etcd; do
      while read -r n pid; do
        # kube-apiserver stops listening at once but may take ~10 s to exit; its data goes anyway.
        [ "$n" = "$name" ] && stop_pid "$pid" "$([ "$n" = kube-apiserver ] && echo 3 || echo 10)"
      done <"$dir/pids"
    done
    rm -f "$dir/pids"
  fi
  rm -rf "$dir/etcd" "$dir/pki" "$dir/logs" "$dir/kubeconfig" "$dir/env" "$dir/apiserver.args" \
    "$dir/audit-policy.yaml"
  rmdir "$dir" 2>/dev/null || true
}

cmd_env() {
  local dir=${1:?usage: local-cluster.sh env DIR}
  [ -f "$dir/env" ] || die "no cluster in $dir"
  grep '^export' "$dir/env"
}

case "${1:-}" in
  build) cmd_build ;;
  gateway-crds) cmd_gateway_crds ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  env) shift; cmd_env "$@" ;;
  restart-apiserver) shift; cmd_restart_apiserver "$@" ;;
  *) echo "usage: $0 build | gateway-crds | up DIR | env DIR | restart-apiserver DIR | down DIR" >&2; exit 2 ;;
esac

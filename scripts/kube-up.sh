#!/usr/bin/env bash
# scripts/kube-up.sh DIR: a real, local Kubernetes control plane for veer's tests and demo,
# with all its state under DIR. Prints `ready` on the last line of stdout when a test
# Deployment's pod is Ready; on failure, says which component failed with the tail of its log,
# stops what it started, and exits non-zero. scripts/kube-down.sh DIR stops it.
#
# Measured on the 2-core machine (2026-12-04; "load" is the 1-minute load average):
#   cold build, scripts/kube-build.sh with no cache entry and empty GOCACHE and GOMODCACHE
#     (so including every module download): 4 min 49 s, 434 CPU-s, at load 3-6 (this build
#     plus light jobs); 11 min 6 s at load 4-13 while other Rust builds ran (it got 0.76 of
#     a core on average). Go's build cache then holds 2.6 GB, its module cache 0.7 GB.
#   warm kube-up (binaries cached) to `ready`: 8.7-9.5 s at load 1.5; 19-29 s at load 10-13.
#   kube-down: 1.2 s (clients, then the API server, then etcd; each exits on SIGTERM).
#   tests/tests/kube_up.rs, the whole test: 13 s at load 2; 41 s at load 12.
#   --istio (2026-12-05): istiod /ready 0.5 s after its start at load 2-3, 1.6-2.4 s beside a
#     cold Go build; kube-up --istio to `ready` 15 s (23 s beside that build). The first
#     --istio run builds istiod (scripts/istiod-build.sh: about 6.5 minutes cold).
#
# What it starts, each a plain process on 127.0.0.1 with a free port, PIDs in DIR/pids and
# logs in DIR/logs/<name>.log:
#   etcd                     DIR/etcd (plain HTTP on loopback, no fsync: test data only)
#   kube-apiserver           client-cert auth (CA and certs made here with openssl),
#                            --authorization-mode=Node,RBAC, service-account signing keys
#                            (TokenRequest: `kubectl create token` works)
#   kube-controller-manager  its own kubeconfig and per-controller service-account
#                            credentials; all default controllers (garbage collector included)
#   kube-scheduler           its own kubeconfig
#   kwok                     a stand-in for kubelets: manages Node kwok-node-0 (32 cpu, 256Gi,
#                            1000 pods) with the stages in scripts/kube/kwok-stages.yaml (a pod
#                            annotated veer.test/never-ready: "true" stays unready)
#
#   istiod (--istio only)    pilot-discovery (built by scripts/istiod-build.sh) reading this
#                            API server: plaintext xDS on a free port, no CA, no webhooks,
#                            Istio-only Envoy extensions switched off, so that a plain Envoy
#                            bootstrapped to it (tests/src/istio.rs) accepts what it sends.
#                            kube-controller-manager then runs without the EndpointSlice
#                            controllers: kwok's pods run no process, so the tests write the
#                            EndpointSlices that reach their local backends themselves.
#
# What it installs: the Istio CRDs (istio.io/api) and the Gateway API standard CRDs
# (sigs.k8s.io/gateway-api), at the versions in scripts/kube/versions.env; the Flagger
# Canary/MetricTemplate CRDs from manifests/crds/flagger.app.yaml, or from
# $VEER_FLAGGER_CRDS; and the controller's namespace, ServiceAccount and RBAC from
# manifests/kubernetes/ (rbac.yaml, or $VEER_RBAC).
#
# What it writes:
#   DIR/kubeconfig        cluster-admin (client cert CN=admin, O=system:masters)
#   DIR/veer.kubeconfig   ServiceAccount veer-system/veer-controller (a 48 h token)
#   DIR/env               shell-sourceable: KUBECONFIG, VEER_KUBECONFIG, KUBE_APISERVER,
#                         KUBE_BIN_DIR, KUBECTL, KUBE_VERSION, ETCD_ENDPOINT, KUBE_DIR
#   DIR/pids              "<name> <pid>" lines, for kube-down.sh
#   with --istio, also in DIR/env: ISTIOD_XDS (host:port, plaintext gRPC), ISTIOD_HTTP
#                         (host:port of /ready and /debug/*), ISTIOD_BIN; DIR/mesh.yaml
#
# The readiness check runs a Deployment in namespace kube-up-check and deletes the namespace
# (without waiting) once its pod is Ready, so tests start from a cluster with only their own
# objects in it.
#
# Environment:
#   VEER_FLAGGER_CRDS=path   the Canary/MetricTemplate CRDs to install instead of veer's own
#   VEER_RBAC=path           the controller's ClusterRole(+binding) instead of rbac.yaml
#   VEER_KUBE_OWNER_PID=pid  stop the cluster (kube-down.sh) when that process exits, so a
#                            killed test run leaves nothing behind (the Rust harness sets it)
#   VEER_KUBE_TIMEOUT=secs   the deadline for each start-up phase (default 120)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
say() { printf 'kube-up: [%3ds] %s\n' "$SECONDS" "$*" >&2; }
usage() { say "usage: scripts/kube-up.sh [--istio] DIR (a new or empty directory for the cluster's state)"; exit 2; }

istio=0
if [[ "${1:-}" == --istio ]]; then
    istio=1
    shift
fi
[[ $# -eq 1 ]] || usage
mkdir -p "$1"
dir="$(cd "$1" && pwd)"
# The path goes unquoted into kubeconfigs, the env file and command lines; keep it plain.
[[ "$dir" =~ ^[A-Za-z0-9_./+-]+$ ]] || { say "DIR must be a plain path ([A-Za-z0-9_./+-]), not '$dir'"; exit 2; }
# A used DIR has another cluster's etcd data, keys and PIDs (maybe still running).
if [[ -n "$(ls -A "$dir")" ]]; then
    say "$dir is not empty; give a new or empty DIR (stop a cluster running there with scripts/kube-down.sh $dir)"
    exit 2
fi
timeout="${VEER_KUBE_TIMEOUT:-120}"

flagger_crds="${VEER_FLAGGER_CRDS:-$root/manifests/crds/flagger.app.yaml}"
if [[ ! -f "$flagger_crds" ]]; then
    if [[ -n "${VEER_FLAGGER_CRDS:-}" ]]; then
        say "VEER_FLAGGER_CRDS is '$VEER_FLAGGER_CRDS', which does not exist"
    else
        say "no Canary/MetricTemplate CRDs: manifests/crds/flagger.app.yaml does not exist (generate it with \`veer crds\`) and VEER_FLAGGER_CRDS is not set"
    fi
    exit 1
fi
rbac="${VEER_RBAC:-$root/manifests/kubernetes/rbac.yaml}"
[[ -f "$rbac" ]] || { say "RBAC file '$rbac' does not exist"; exit 1; }

started=$SECONDS
bin="$("$root/scripts/kube-build.sh" | tail -n 1)"
istiod_bin=""
if [[ $istio == 1 ]]; then
    istiod_bin="$("$root/scripts/istiod-build.sh" | tail -n 1)"
fi
cache="$(dirname "$bin")"
kubectl="$bin/kubectl"
# shellcheck source=kube/versions.env
source "$root/scripts/kube/versions.env"

mkdir -p "$dir/logs" "$dir/pki" "$dir/etcd"
chmod 700 "$dir/pki" "$dir/etcd"
: >"$dir/pids"

if [[ -n "${VEER_KUBE_OWNER_PID:-}" ]]; then
    # The watchdog execs kube-down.sh when the owner exits, also while this script is still
    # starting things; its command line names DIR, so kube-down.sh (run by anyone else)
    # recognises and stops it too.
    setsid bash -c 'tail --pid="$1" -f /dev/null; exec "$2" "$3"' kube-watchdog \
        "$VEER_KUBE_OWNER_PID" "$root/scripts/kube-down.sh" "$dir" \
        </dev/null >>"$dir/logs/watchdog.log" 2>&1 &
    echo "watchdog $!" >>"$dir/pids"
fi

# ---- stopping on failure --------------------------------------------------------------------
ok=0
failed_component=""
on_exit() {
    local rc=$?
    [[ $ok == 1 ]] && return
    if [[ -n "$failed_component" ]]; then
        say "FAILED: $failed_component. Last lines of $dir/logs/$failed_component.log:"
        tail -n 40 "$dir/logs/$failed_component.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    fi
    say "stopping what was started (scripts/kube-down.sh $dir)"
    "$root/scripts/kube-down.sh" "$dir" >&2 || true
    exit $((rc == 0 ? 1 : rc))
}
trap on_exit EXIT
fail() { failed_component="${2:-}"; say "$1"; exit 1; }

# ---- ports ---------------------------------------------------------------------------------
# Bound all at once and released together, so they are distinct; another process could take
# one before its component binds it, and then that component fails to start (reported). The
# last four are istiod's (xDS, HTTP, monitoring, ControlZ), used with --istio only: its
# defaults are fixed ports, which parallel runs would share.
read -r p_etcd p_peer p_api p_kcm p_sched p_xds p_ihttp p_imon p_ctrlz < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(9)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')
api="https://127.0.0.1:$p_api"

# ---- certificates --------------------------------------------------------------------------
say "certificates"
pki="$dir/pki"
ossl() { openssl "$@" 2>>"$dir/logs/openssl.log" >&2 || fail "openssl $1 failed (see $dir/logs/openssl.log)" openssl; }
key() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key"; }
key ca
ossl req -x509 -new -key "$pki/ca.key" -subj "/CN=veer-local-kubernetes-ca" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/ca.crt"
# cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
cert() {
    key "$1"
    ossl req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        [[ -n "${4:-}" ]] && echo "subjectAltName=$4"
    } >"$pki/$1.ext"
    ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt"
}
cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=admin" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
# The aggregation layer's client: without it the API server publishes no request-header CA
# and every component logs an error about it each time it reads its authentication config.
cert front-proxy-client "/CN=front-proxy-client" clientAuth
# The service-account token signing pair (TokenRequest; the controller manager's tokens).
key sa
ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# kubeconfig FILE USER CERT_NAME
kubeconfig() {
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: veer-local
  cluster:
    server: $api
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$3.crt
    client-key: $pki/$3.key
contexts:
- name: veer-local
  context: {cluster: veer-local, user: $2}
current-context: veer-local
EOF
}
kubeconfig "$dir/kubeconfig" admin admin
kubeconfig "$dir/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
kubeconfig "$dir/scheduler.kubeconfig" system:kube-scheduler scheduler
k() { "$kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }

# ---- processes -----------------------------------------------------------------------------
# start NAME ARGS...: runs bin/NAME in its own session (so a terminal's Ctrl-C or the test
# runner's process group does not reach it; kube-down.sh stops it), output to its log.
start() {
    local name=$1
    shift
    setsid "$bin/$name" "$@" </dev/null >>"$dir/logs/$name.log" 2>&1 &
    echo "$name $!" >>"$dir/pids"
}
alive() { local pid; pid="$(awk -v n="$1" '$1 == n {print $2}' "$dir/pids")"; kill -0 "$pid" 2>/dev/null; }
# wait_until NAME WHAT COMMAND...: polls COMMAND until it succeeds, failing early if process
# NAME has exited and at the deadline otherwise.
wait_until() {
    local name=$1 what=$2 deadline=$((SECONDS + timeout))
    shift 2
    until "$@" >/dev/null 2>&1; do
        alive "$name" || fail "$name exited while waiting for $what" "$name"
        ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what" "$name"
        sleep 0.2
    done
}

say "etcd on 127.0.0.1:$p_etcd"
start etcd --name veer-local --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$p_etcd" --advertise-client-urls "http://127.0.0.1:$p_etcd" \
    --listen-peer-urls "http://127.0.0.1:$p_peer" --initial-advertise-peer-urls "http://127.0.0.1:$p_peer" \
    --initial-cluster "veer-local=http://127.0.0.1:$p_peer" \
    --unsafe-no-fsync --log-level warn
wait_until etcd "etcd /health" curl -fsS "http://127.0.0.1:$p_etcd/health"

say "kube-apiserver on $api"
# --endpoint-reconciler-type=none: the `kubernetes` Service's endpoints would be 127.0.0.1,
# which Endpoints validation rejects (loopback), and nothing in the tests runs in a pod.
start kube-apiserver --etcd-servers "http://127.0.0.1:$p_etcd" \
    --bind-address 127.0.0.1 --secure-port "$p_api" --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none \
    --cert-dir "$dir/apiserver" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --requestheader-client-ca-file "$pki/ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=true --profiling=false
wait_until kube-apiserver "kube-apiserver /readyz" k get --raw /readyz

say "kube-controller-manager and kube-scheduler"
kcm_controllers=()
if [[ $istio == 1 ]]; then
    # Under istiod, EndpointSlices are what reaches a backend. kwok's pods have IPs that no
    # process listens on, so the tests write each Service's slices (to their local backends)
    # and these controllers must not add the pods' slices beside them.
    kcm_controllers=(--controllers '*,-endpointslice-controller,-endpointslice-mirroring-controller')
fi
start kube-controller-manager --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$p_kcm" \
    --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=true \
    "${kcm_controllers[@]}" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --profiling=false
start kube-scheduler --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$p_sched" \
    --leader-elect=false --profiling=false

say "kwok"
start kwok --kubeconfig "$dir/kubeconfig" --manage-all-nodes=true --config "$root/scripts/kube/kwok-stages.yaml" \
    --cidr 10.244.0.0/16 --node-ip 127.0.0.1

# What follows needs only the API server, so it goes on while the others start: the Node
# (kwok picks it up), the check Deployment (the controller manager and the scheduler take it
# from there), the CRDs and the RBAC.
k apply -f - >>"$dir/logs/kwok.log" 2>&1 <<'EOF' || fail "creating Node kwok-node-0 failed" kwok
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
  annotations:
    kwok.x-k8s.io/node: fake
status:
  capacity: {cpu: "32", memory: 256Gi, pods: "1000"}
  allocatable: {cpu: "32", memory: 256Gi, pods: "1000"}
EOF

say "Node kwok-node-0; readiness check: a Deployment in namespace kube-up-check"
k apply -f - >"$dir/logs/check.log" 2>&1 <<'EOF' || fail "creating the check Deployment failed" check
apiVersion: v1
kind: Namespace
metadata:
  name: kube-up-check
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: check
  namespace: kube-up-check
spec:
  replicas: 1
  selector:
    matchLabels: {app: check}
  template:
    metadata:
      labels: {app: check}
    spec:
      containers:
      - name: check
        image: registry.k8s.io/pause:3.10
EOF

say "CRDs: Istio $ISTIO_API_VERSION, Gateway API $GATEWAY_API_VERSION, Flagger ($flagger_crds)"
k apply --server-side --force-conflicts -f "$cache/crds/istio/" -f "$cache/crds/gateway-api/" \
    -f "$flagger_crds" >"$dir/logs/crds.log" 2>&1 || fail "installing the CRDs failed" crds
say "RBAC: namespace veer-system, ServiceAccount veer-controller, $rbac"
k apply --server-side -f "$root/manifests/kubernetes/namespace.yaml" \
    -f "$root/manifests/kubernetes/serviceaccount.yaml" -f "$rbac" \
    >"$dir/logs/rbac.log" 2>&1 || fail "installing the RBAC manifests failed" rbac

say "waiting for kube-controller-manager, kube-scheduler, Node kwok-node-0, the CRDs"
wait_until kube-controller-manager "kube-controller-manager /healthz" curl -kfsS "https://127.0.0.1:$p_kcm/healthz"
wait_until kube-scheduler "kube-scheduler /healthz" curl -kfsS "https://127.0.0.1:$p_sched/healthz"

node_ready() {
    [[ "$(k get node kwok-node-0 -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_until kwok "Node kwok-node-0 to become Ready (kwok)" node_ready

wait_until kube-apiserver "the CRDs to be established" \
    k wait --for condition=established --timeout=10s crd --all

# The veer-controller token: TokenRequest, as a user's `kubectl create token` would.
token="$(k create token veer-controller -n veer-system --duration=48h 2>>"$dir/logs/rbac.log")" ||
    fail "kubectl create token veer-controller failed" rbac
cat >"$dir/veer.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: veer-local
  cluster:
    server: $api
    certificate-authority: $pki/ca.crt
users:
- name: veer-controller
  user:
    token: $token
contexts:
- name: veer-local
  context: {cluster: veer-local, user: veer-controller, namespace: default}
current-context: veer-local
EOF
chmod 600 "$dir/veer.kubeconfig" "$dir/kubeconfig"

# ---- end-to-end readiness: Deployment -> ReplicaSet -> Pod -> scheduled -> Ready -----------
say "waiting for the check Deployment's pod to become Ready"
check_field() { k get pods -n kube-up-check -l app=check -o "jsonpath=$1" 2>/dev/null; }
# The component that the missing step belongs to, for the failure message.
stuck_at() {
    if [[ -z "$(check_field '{.items[*].metadata.name}')" ]]; then
        echo kube-controller-manager
    elif [[ -z "$(check_field '{.items[*].spec.nodeName}')" ]]; then
        echo kube-scheduler
    else
        echo kwok
    fi
}
deadline=$((SECONDS + timeout))
until [[ "$(check_field '{.items[*].status.conditions[?(@.type=="Ready")].status}')" == True ]]; do
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
        alive "$c" || fail "$c exited during the readiness check" "$c"
    done
    if ((SECONDS >= deadline)); then
        c="$(stuck_at)"
        k get deploy,rs,pods -n kube-up-check -o wide >>"$dir/logs/check.log" 2>&1 || true
        fail "timed out after ${timeout}s waiting for the check Deployment's pod to become Ready; stuck at $c (objects in $dir/logs/check.log)" "$c"
    fi
    sleep 0.2
done
k delete namespace kube-up-check --wait=false >>"$dir/logs/check.log" 2>&1 || true

# ---- istiod (--istio) -----------------------------------------------------------------------
if [[ $istio == 1 ]]; then
    say "istiod on 127.0.0.1:$p_xds (xDS), 127.0.0.1:$p_ihttp (HTTP)"
    k create namespace istio-system >>"$dir/logs/istiod.log" 2>&1 ||
        fail "creating namespace istio-system failed" istiod
    # No auto-mTLS (it puts SDS sockets on clusters, which only pilot-agent serves), no
    # tracing, no ingress controller, no default providers (a Prometheus metrics provider
    # would add the Istio-only istio.stats filter).
    printf '%s\n' 'rootNamespace: istio-system' 'enableAutoMtls: false' 'enableTracing: false' \
        'ingressControllerMode: "OFF"' >"$dir/mesh.yaml"
    # PILOT_ENABLE_METADATA_EXCHANGE / PILOT_ENABLE_ALPN_FILTER off: istiod would otherwise
    # add istio.metadata_exchange and istio.alpn, which only Istio's Envoy build has.
    # Not through start(): the binary is in istiod's cache entry, not the kube one.
    setsid env POD_NAMESPACE=istio-system POD_NAME=istiod-local ENABLE_CA_SERVER=false \
        INJECT_ENABLED=false INJECTION_WEBHOOK_CONFIG_NAME= VALIDATION_WEBHOOK_CONFIG_NAME= \
        PILOT_ENABLE_METADATA_EXCHANGE=false PILOT_ENABLE_ALPN_FILTER=false \
        "$istiod_bin" discovery --kubeconfig "$dir/kubeconfig" --meshConfig "$dir/mesh.yaml" \
        --grpcAddr "127.0.0.1:$p_xds" --httpAddr "127.0.0.1:$p_ihttp" --httpsAddr= \
        --secureGRPCAddr= --monitoringAddr "127.0.0.1:$p_imon" \
        --ctrlz_address 127.0.0.1 --ctrlz_port "$p_ctrlz" \
        </dev/null >>"$dir/logs/istiod.log" 2>&1 &
    echo "istiod $!" >>"$dir/pids"
    istiod_started=$(date +%s%3N)
    wait_until istiod "istiod /ready" curl -fsS "http://127.0.0.1:$p_ihttp/ready"
    say "istiod ready in $(($(date +%s%3N) - istiod_started)) ms"
fi

cat >"$dir/env" <<EOF
# The local control plane started by scripts/kube-up.sh; stop it with scripts/kube-down.sh $dir
export KUBE_DIR=$dir
export KUBECONFIG=$dir/kubeconfig
export VEER_KUBECONFIG=$dir/veer.kubeconfig
export KUBE_APISERVER=$api
export KUBE_BIN_DIR=$bin
export KUBECTL=$kubectl
export KUBE_VERSION=$KUBE_VERSION
export ETCD_ENDPOINT=http://127.0.0.1:$p_etcd
EOF
if [[ $istio == 1 ]]; then
    cat >>"$dir/env" <<EOF
export ISTIOD_XDS=127.0.0.1:$p_xds
export ISTIOD_HTTP=127.0.0.1:$p_ihttp
export ISTIOD_BIN=$istiod_bin
EOF
fi

ok=1
say "up in $((SECONDS - started)) s: source $dir/env (KUBECONFIG=$dir/kubeconfig)"
echo ready

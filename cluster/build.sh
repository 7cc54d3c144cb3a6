#!/usr/bin/env bash
# Builds the binaries of the local test control plane from the Go module proxy, or reuses them.
#
# There are no release downloads or container images on our machines, so everything is compiled from source:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, etcd and our
# custom-metrics test adapter through the wrapper module in gomod/ (kubernetes' own go.mod points its staging
# modules at local folders), kwok and helm with `go install module@version`, prometheus-adapter through its own
# wrapper module in prometheus-adapter/ (the proxy refuses the lookups `go install` would make), and what real
# nodes need beside the kubelet (CoreDNS and the CNI plugins) through nodes/. The result is cached in a directory keyed by every pinned
# version, so a warm run only checks a stamp file and never starts the Go toolchain.
#
# Progress goes to stderr; the last line on stdout is the directory holding the binaries.
# With --check, only print that directory if it is complete, and exit with status 3 if it is not.
# Environment: AVR_CLUSTER_CACHE (default ~/.cache/avr-cluster), plus the usual GOMODCACHE/GOCACHE/GOPROXY.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Keep these in step with gomod/go.mod (kubernetes' require and replace lines, etcd's server module and
# custom-metrics-apiserver); ETCD_VERSION is the etcd release that kubernetes itself requires.
KUBE_VERSION=v1.35.8
KUBE_BUILD_DATE=2026-08-20T15:16:14Z # publication time of the module version, so builds are reproducible
ETCD_VERSION=v3.6.5
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
HELM_KUBE_MINOR=37 # the client-go minor that helm's go.mod requires; helm reports it as its default kubeVersion
ADAPTER_VERSION=v1.35.0
PROM_ADAPTER_VERSION=v0.12.0 # keep in step with prometheus-adapter/go.mod; the newest release on the proxy
RECIPE=1 # bump when the flags below change, to invalidate caches built with the old ones

binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd metrics-adapter kwok helm prometheus-adapter
    kubelet kube-proxy coredns cni/bridge cni/host-local cni/loopback cni/portmap)

mod_hash=$(cat "$here/gomod/go.mod" "$here/gomod/go.sum" "$here/prometheus-adapter/go.mod" \
    "$here/prometheus-adapter/go.sum" "$here/nodes/go.mod" "$here/nodes/go.sum" "$here/nodes/dns.go" \
    | sha256sum | cut -c1-12)
key="k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_cma-${ADAPTER_VERSION}"
key+="_pa-${PROM_ADAPTER_VERSION}_r${RECIPE}-${mod_hash}"
cache=${AVR_CLUSTER_CACHE:-$HOME/.cache/avr-cluster}
dest="$cache/$key"

log() { echo "cluster/build.sh: $*" >&2; }

is_complete() {
    [ -f "$1/stamp" ] && [ "$(cat "$1/stamp")" = "$key" ] || return 1
    local b
    for b in "${binaries[@]}"; do
        [ -x "$1/bin/$b" ] || return 1
    done
}

if is_complete "$dest"; then
    echo "$dest/bin"
    exit 0
elif [ "${1-}" = --check ]; then
    log "no binaries in $dest yet; run cluster/build.sh"
    exit 3
fi

command -v go >/dev/null || { log "Go is not installed (need Go >= 1.26)"; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
log "building $key into $dest (cold: about 15 minutes on 2 cores)"
start=$SECONDS

# The same version stamps upstream's release build sets, so /version and `kubectl version` report the release.
major=${KUBE_VERSION#v}
major=${major%%.*}
minor=${KUBE_VERSION#v*.}
minor=${minor%%.*}
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    kube_ldflags+=" -X $pkg.buildDate=$KUBE_BUILD_DATE"
done

export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
(
    cd "$here/gomod"
    log "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, etcd, metrics-adapter"
    # One invocation, so the packages the commands share (k8s.io/apiserver above all) are compiled once.
    go build -trimpath -ldflags "$kube_ldflags" -o "$work/bin/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubectl \
        k8s.io/kubernetes/cmd/kubelet \
        k8s.io/kubernetes/cmd/kube-proxy \
        go.etcd.io/etcd/server/v3 \
        ./metrics-adapter
    mv "$work/bin/server" "$work/bin/etcd" # go names it after the package path
)

# Outside any module, `go install module@version` builds with that module's own go.mod and go.sum.
install() {
    log "$1"
    (cd "$work" && GOFLAGS= GOBIN="$work/bin" go install -trimpath -ldflags "$2" "$1")
}
install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
helm_version=helm.sh/helm/v3/internal/version
install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "-s -w -X $helm_version.version=$HELM_VERSION \
-X $helm_version.gitTreeState=clean \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_KUBE_MINOR \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_KUBE_MINOR"

(
    cd "$here/prometheus-adapter"
    log "prometheus-adapter $PROM_ADAPTER_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$work/bin/prometheus-adapter" sigs.k8s.io/prometheus-adapter/cmd/adapter
)

(
    cd "$here/nodes"
    log "coredns and the CNI plugins, for real nodes"
    go build -trimpath -ldflags "-s -w" -o "$work/bin/coredns" .
    mkdir "$work/bin/cni"
    go build -trimpath -ldflags "-s -w" -o "$work/bin/cni/" \
        github.com/containernetworking/plugins/plugins/main/bridge \
        github.com/containernetworking/plugins/plugins/ipam/host-local \
        github.com/containernetworking/plugins/plugins/main/loopback \
        github.com/containernetworking/plugins/plugins/meta/portmap
)

echo "$key" >"$work/stamp"
# Publish atomically; if a concurrent build won the race, keep its result.
if ! mv -T "$work" "$dest" 2>/dev/null; then
    is_complete "$dest" || { rm -rf "$dest" && mv -T "$work" "$dest"; }
fi
trap - EXIT
rm -rf "$work"
log "done in $((SECONDS - start))s"
echo "$dest/bin"

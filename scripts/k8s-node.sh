#!/usr/bin/env bash
# A real single-node Kubernetes (1.20, from Debian's source package) on this machine, for
# running the Helm chart (deploy/helm/stolon) and the stolon-rs image in real pods.
#
#   scripts/k8s-node.sh up       build what is missing (once per machine), start the node,
#                                wait until it is Ready; prints the admin kubeconfig
#   scripts/k8s-node.sh down     stop and remove everything `up` made (also after a failed
#                                `up`); keeps the imported images for the next `up`
#   scripts/k8s-node.sh down --purge   the same, and delete the whole state directory
#   scripts/k8s-node.sh status   what runs
#   scripts/k8s-node.sh images   only build the images (docker-archive tars, cached)
#
# Needs root and Debian 12. What runs: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd (its CRI plugin, runc, the CNI bridge plugin), the kubelet,
# kube-proxy (iptables mode), dnsmasq as the cluster DNS (a hosts file regenerated from the
# API whenever Services or Endpoints change: Services, headless Services' endpoints and
# StatefulSet pod names; no SRV records), and the loop that regenerates that file and
# recycles released local volumes.
#
# Addresses: everything listens on, and routes to, interfaces this script creates, never on
# the machine's own network: the node is 198.51.100.1 on an interface of its own,
# stolon-k8s0 (a dummy interface, or a veth pair where the kernel has no dummy driver;
# TEST-NET-2), Services get 198.51.100.128/25 (routed to it), pods 203.0.113.0/24
# (TEST-NET-3) on the CNI bridge. Pods cannot reach beyond the node (a FORWARD rule drops
# what would leave the bridge), and of the machine itself only the node's address. These
# ranges must hold no address the machine owns or routes, and none that the machine's
# package registries resolve to (a route to the pods' range would shadow theirs while the
# node is up): when the first plan clashes, `up` takes the next one of `address_plans`
# (198.18.0.0/23, RFC 2544; then 100.64.0.0/23, RFC 6598) and records its choice in the
# state directory for the other commands. STOLON_K8S_NODE_IP, STOLON_K8S_SERVICE_CIDR and
# STOLON_K8S_POD_CIDR (a /24) set them instead; `up` refuses them if they clash.
#
# Storage: a StorageClass `local-storage` (the default class, WaitForFirstConsumer) and
# STOLON_K8S_NODE_VOLUMES (6) local PersistentVolumes of STOLON_K8S_NODE_VOLUME_SIZE (50Gi,
# not enforced) in directories of the state directory. A released volume is wiped and made
# available again within seconds.
#
# Images, made without any registry and imported into containerd:
# - k8s.gcr.io/pause:3.2, the sandbox image: build/pause/linux/pause.c, compiled statically;
# - stolon-rs:0.1.0 (the chart's default): deploy/Dockerfile, the image users build, built by
#   scripts/build-image.sh (Debian's buildah on a debootstrap base) from
#   target/release/{stolon-keeper,stolon-sentinel,stolon-proxy,stolonctl} (build them
#   first: cargo build --release --bins). Rebuilt only when the binaries or the Dockerfile
#   change.
#
# State: $STOLON_K8S_NODE_DIR (/var/lib/stolon-k8s-node); logs in its logs/ directory.
# Cache (binaries, image tars): $STOLON_CACHE (/var/cache/stolon-rs).
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$script_dir")
state=${STOLON_K8S_NODE_DIR:-/var/lib/stolon-k8s-node}
cache=${STOLON_CACHE:-/var/cache/stolon-rs}
bin="$cache/kubernetes/bin"
image_cache="$cache/k8s-node"
node_name=${STOLON_K8S_NODE_NAME:-stolon-node}
# Node address, Services' range, pods' range: tried in this order unless given.
address_plans=(
  "198.51.100.1 198.51.100.128/25 203.0.113.0/24"
  "198.18.0.1 198.18.0.128/25 198.18.1.0/24"
  "100.64.0.1 100.64.0.128/25 100.64.1.0/24"
)
addresses_given=false
[ -z "${STOLON_K8S_NODE_IP:-}${STOLON_K8S_SERVICE_CIDR:-}${STOLON_K8S_POD_CIDR:-}" ] || addresses_given=true
addresses_file="$state/addresses"
read -r node_ip service_cidr pod_cidr <<<"${address_plans[0]}"
if ! $addresses_given && [ -f "$addresses_file" ]; then
  read -r node_ip service_cidr pod_cidr <"$addresses_file"
fi
node_ip=${STOLON_K8S_NODE_IP:-$node_ip}
service_cidr=${STOLON_K8S_SERVICE_CIDR:-$service_cidr}
pod_cidr=${STOLON_K8S_POD_CIDR:-$pod_cidr}
volumes=${STOLON_K8S_NODE_VOLUMES:-6}
volume_size=${STOLON_K8S_NODE_VOLUME_SIZE:-50Gi}
dummy=stolon-k8s0
bridge=stolon-cni0
storage_class=local-storage
fw_chain=STOLON-K8S-NODE
pause_image=k8s.gcr.io/pause:3.2
stolon_image=stolon-rs:0.1.0

pki="$state/pki"
run="$state/run"
logs="$state/logs"
admin_kubeconfig="$state/admin.kubeconfig"
ctr_sock="$run/containerd.sock"

export PATH="$bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

started=$SECONDS
log() { echo "k8s-node: [$((SECONDS - started))s] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------
# Addresses

ip_to_int() {
  local IFS=.
  # shellcheck disable=SC2086
  set -- $1
  echo $((($1 << 24) | ($2 << 16) | ($3 << 8) | $4))
}
int_to_ip() { echo "$(($1 >> 24 & 255)).$(($1 >> 16 & 255)).$(($1 >> 8 & 255)).$(($1 & 255))"; }
# prints "first last" of a CIDR
cidr_range() {
  local addr=${1%/*} len=${1#*/} a
  a=$(ip_to_int "$addr")
  local size=$((1 << (32 - len)))
  local first=$((a & ~(size - 1) & 0xffffffff))
  echo "$first $((first + size - 1))"
}
overlaps() { # cidr cidr
  local a b
  read -r a1 a2 <<<"$(cidr_range "$1")"
  read -r b1 b2 <<<"$(cidr_range "$2")"
  [ "$a1" -le "$b2" ] && [ "$b1" -le "$a2" ]
}
derive_addresses() {
  pod_gateway=$(int_to_ip $(($(cidr_range "$pod_cidr" | cut -d' ' -f1) + 1)))
  api_service_ip=$(int_to_ip $(($(cidr_range "$service_cidr" | cut -d' ' -f1) + 1)))
  api="https://$node_ip:6443"
}
derive_addresses

# The hosts of the package registries this machine installs from: apt's sources, and the
# registries of the languages' package managers.
registry_hosts() {
  {
    grep -hoE '^deb(-src)?[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^/[:space:]]+' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed -E 's#.*https?://##'
    grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -oE 'https?://[^/[:space:]]+' | sed -E 's#https?://##'
    printf '%s\n' index.crates.io static.crates.io pypi.org files.pythonhosted.org registry.npmjs.org
  } | sed -E 's/:[0-9]+$//' | sort -u
}

# Prints why the current ranges cannot be used (nothing when they can): they overlap each
# other, an address or route of the machine (other than the default route and our own
# interfaces'), or an address a package registry resolves to.
address_clashes() {
  local ours=("$node_ip/32" "$service_cidr" "$pod_cidr") line prefix mine host address
  overlaps "$node_ip/32" "$service_cidr" && echo "the node address $node_ip is inside the service range $service_cidr"
  overlaps "$node_ip/32" "$pod_cidr" && echo "the node address $node_ip is inside the pod range $pod_cidr"
  overlaps "$service_cidr" "$pod_cidr" && echo "the service range $service_cidr overlaps the pod range $pod_cidr"
  while read -r line; do
    prefix=${line%% *}
    [[ "$prefix" =~ ^[0-9] ]] || continue
    case "$line" in *" dev $dummy"* | *" dev $bridge"*) continue ;; esac
    [[ "$prefix" == */* ]] || prefix="$prefix/32"
    for mine in "${ours[@]}"; do
      overlaps "$prefix" "$mine" && echo "the machine already routes $prefix ($line), which overlaps $mine"
    done
  done < <(ip -4 route show table all | grep -v '^broadcast\|^local 127\.' | sed -E 's/^(local|unicast) //')
  for host in $(registry_hosts); do
    for address in $(getent ahostsv4 "$host" 2>/dev/null | awk '{print $1}' | sort -u); do
      for mine in "${ours[@]}"; do
        overlaps "$address/32" "$mine" && echo "the package registry $host resolves to $address, inside $mine"
      done
    done
  done
  return 0
}

# Takes the given ranges, refused if they clash, or the first plan that does not clash;
# records the choice for the commands that come after `up`.
choose_addresses() {
  local clashes plan
  if $addresses_given; then
    clashes=$(address_clashes)
    [ -z "$clashes" ] || die "$(head -n 1 <<<"$clashes"): choose other ranges (STOLON_K8S_NODE_IP, STOLON_K8S_SERVICE_CIDR, STOLON_K8S_POD_CIDR)"
  else
    for plan in "${address_plans[@]}"; do
      read -r node_ip service_cidr pod_cidr <<<"$plan"
      clashes=$(address_clashes)
      [ -n "$clashes" ] || break
      log "not using $plan: $(head -n 1 <<<"$clashes")"
    done
    [ -z "$clashes" ] || die "every address plan clashes with this machine; set STOLON_K8S_NODE_IP, STOLON_K8S_SERVICE_CIDR and STOLON_K8S_POD_CIDR"
  fi
  derive_addresses
  mkdir -p "$state"
  echo "$node_ip $service_cidr $pod_cidr" >"$addresses_file"
}

# ---------------------------------------------------------------------------------------
# Processes: one pid file per daemon in $run; a pid counts only while its command line is
# still the daemon's.

pid_of() { # name -> pid if it runs
  local file="$run/$1.pid" pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$(cat "$run/$1.cmd" 2>/dev/null || echo "$1")" || return 1
  echo "$pid"
}

# start NAME MATCH COMMAND...: runs COMMAND in its own session, output to logs/NAME.log;
# MATCH is a string of its command line that identifies it later.
start_daemon() {
  local name=$1 match=$2
  shift 2
  mkdir -p "$run" "$logs"
  echo "$match" >"$run/$name.cmd"
  setsid "$@" </dev/null >"$logs/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
  sleep 0.2
  pid_of "$name" >/dev/null || die "$name exited at once; its log $logs/$name.log ends with:
$(tail -15 "$logs/$name.log")"
}

# alive PID: it runs (a zombie waiting for the machine's init to reap it does not count)
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

stop_daemon() { # name [seconds]
  local name=$1 wait=${2:-15} pid i
  if pid=$(pid_of "$name"); then
    # The sync loop's watches are its children, in its process group (start_daemon's setsid).
    if [ "$name" = sync ]; then kill -TERM -- "-$pid" 2>/dev/null || true; fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait * 5; i++)); do
      alive "$pid" || break
      sleep 0.2
    done
    if alive "$pid"; then
      log "$name (pid $pid) did not stop within ${wait}s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$run/$name.pid" "$run/$name.cmd"
}

wait_for() { # seconds description command...
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

kctl() { kubectl --kubeconfig "$admin_kubeconfig" "$@"; }

# ---------------------------------------------------------------------------------------
# Packages and programs

ensure_packages() {
  local need=() pkg
  for pkg in containerd runc containernetworking-plugins iptables conntrack socat dnsmasq-base \
    etcd-server openssl curl jq gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
  # Debian's containerd package would start a containerd of its own under systemd; this
  # machine has no systemd, and the node runs its own with its own paths anyway.
}

ensure_programs() {
  local program missing=false
  for program in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm pause; do
    [ -x "$bin/$program" ] || missing=true
  done
  if $missing; then
    log "building the Kubernetes programs (once per machine; about 12 minutes on 2 cores)"
  fi
  bash "$script_dir/kube-tools.sh" --node >/dev/null
}

# ---------------------------------------------------------------------------------------
# Images, imported with `ctr images import`: the stolon-rs image built from deploy/Dockerfile
# (scripts/build-image.sh), and the sandbox's pause image, a docker-archive tar written by
# hand around the one static program it holds.

# write_image OUT NAME CONFIG_JSON LAYER... (each layer a tar with a .diffid file beside it)
write_image() {
  local out=$1 name=$2 config=$3 layer diffid
  shift 3
  local tmp
  tmp=$(mktemp -d "$image_cache/image.XXXXXX")
  local diffids=() paths=()
  for layer in "$@"; do
    diffid=$(cat "$layer.diffid")
    mkdir -p "$tmp/$diffid"
    ln "$layer" "$tmp/$diffid/layer.tar" 2>/dev/null || cp "$layer" "$tmp/$diffid/layer.tar"
    diffids+=("sha256:$diffid")
    paths+=("$diffid/layer.tar")
  done
  jq -cn --argjson config "$config" --args '{architecture: "amd64", os: "linux",
      created: "1970-01-01T00:00:00Z", config: $config,
      rootfs: {type: "layers", diff_ids: $ARGS.positional}}' "${diffids[@]}" >"$tmp/config.json"
  local config_id
  config_id=$(sha256sum "$tmp/config.json" | cut -c1-64)
  mv "$tmp/config.json" "$tmp/$config_id.json"
  jq -cn --arg config "$config_id.json" --arg name "$name" --args \
    '[{Config: $config, RepoTags: [$name], Layers: $ARGS.positional}]' "${paths[@]}" >"$tmp/manifest.json"
  tar -C "$tmp" -cf "$out.tmp" manifest.json "$config_id.json" "${paths[@]%/layer.tar}"
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

layer_from_dir() { # dir tar
  tar --numeric-owner --sort=name --mtime=@0 -C "$1" -cf "$2" .
  sha256sum "$2" | cut -c1-64 >"$2.diffid"
}

# Prints the path of the pause image's tar, made if missing.
pause_image_tar() {
  local out="$image_cache/images/pause-3.2.tar"
  if [ ! -f "$out" ]; then
    mkdir -p "$image_cache/images"
    local tmp
    tmp=$(mktemp -d "$image_cache/pause.XXXXXX")
    mkdir "$tmp/root"
    install -m 0755 "$bin/pause" "$tmp/root/pause"
    layer_from_dir "$tmp/root" "$tmp/layer.tar"
    write_image "$out" "$pause_image" '{"Entrypoint": ["/pause"], "User": "65535:65535"}' "$tmp/layer.tar"
    rm -rf "$tmp"
  fi
  echo "$out"
}

# Prints the path of the stolon-rs image's tar: the one image there is, deploy/Dockerfile
# built by scripts/build-image.sh (rebuilt only when the binaries or the Dockerfile change).
stolon_image_tar() {
  bash "$script_dir/build-image.sh" | tail -n 1
}

# Imports a tar into containerd's k8s.io namespace unless that very tar was the last import.
import_image() { # tar name
  local tar=$1 name=$2 marker
  marker="$state/containerd/root/stolon-k8s-node-imported-$(echo "$name" | tr '/:' '__')"
  if [ "$(cat "$marker" 2>/dev/null)" = "$(basename "$tar")" ] &&
    ctr -a "$ctr_sock" -n k8s.io images ls -q | grep -qx "$(normalized "$name")"; then
    return 0
  fi
  log "importing $name into containerd"
  ctr -a "$ctr_sock" -n k8s.io images import "$tar" >/dev/null
  basename "$tar" >"$marker"
}
normalized() { # how containerd names an image reference without a registry
  case "$1" in
    */*.*/* | *.*/*) echo "$1" ;;
    */*) echo "docker.io/$1" ;;
    *) echo "docker.io/library/$1" ;;
  esac
}

# ---------------------------------------------------------------------------------------
# Certificates and kubeconfigs (ECDSA P-256, one CA)

make_pki() {
  mkdir -p "$pki"
  local cn o
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=stolon-k8s-node-ca" -days 3650 \
    -out "$pki/ca.crt" 2>/dev/null
  # name  subject  extensions
  cert() {
    local name=$1 subject=$2 ext=$3
    openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
    openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
    printf '%s\n' "$ext" >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$pki/$name.ext"
  }
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,IP:$api_service_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$node_name"
  cert kubelet-server "/CN=$node_name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,DNS:$node_name"
  cert admin "/O=system:masters/CN=stolon-k8s-node-admin" "$client"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  cert kubelet "/O=system:nodes/CN=system:node:$node_name" "$client"
  cert controller-manager "/CN=system:kube-controller-manager" "$client"
  cert scheduler "/CN=system:kube-scheduler" "$client"
  cert kube-proxy "/CN=system:kube-proxy" "$client"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2>/dev/null
  openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 0600 "$pki"/*.key
  local who
  for who in admin kubelet controller-manager scheduler kube-proxy; do
    kubeconfig "$who" >"$state/$who.kubeconfig"
    chmod 0600 "$state/$who.kubeconfig"
  done
}

kubeconfig() { # cert name
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: stolon-k8s-node
  cluster:
    server: $api
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$pki/$1.crt")
    client-key-data: $(base64 -w0 "$pki/$1.key")
contexts:
- name: stolon-k8s-node
  context:
    cluster: stolon-k8s-node
    user: $1
current-context: stolon-k8s-node
EOF
}

# ---------------------------------------------------------------------------------------
# What `down` must put back: recorded once, before `up` changes anything.

saved="$state/saved"
sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Directories outside the state directory that the programs create if they are missing.
outside_dirs=(/run/containerd /var/lib/cni /var/log/pods /var/log/containers /run/netns
  /etc/cni /opt/cni /var/lib/kubelet)

record_machine_state() {
  mkdir -p "$saved"
  [ -f "$saved/sysctl" ] || {
    local s
    for s in "${sysctls[@]}"; do
      [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(cat "/proc/sys/${s//.//}")"
    done >"$saved/sysctl.tmp"
    mv "$saved/sysctl.tmp" "$saved/sysctl"
  }
  [ -f "$saved/absent-dirs" ] || {
    local d
    for d in "${outside_dirs[@]}"; do [ -e "$d" ] || echo "$d"; done >"$saved/absent-dirs.tmp"
    mv "$saved/absent-dirs.tmp" "$saved/absent-dirs"
  }
}

# ---------------------------------------------------------------------------------------
# up

setup_network() {
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  # A dummy interface; where the kernel has no dummy driver (as in some VMs), one end of a
  # veth pair whose other end (${dummy}p) stays here too, up, and unused.
  if ! ip link show "$dummy" >/dev/null 2>&1; then
    ip link add "$dummy" type dummy 2>/dev/null || ip link add "$dummy" type veth peer name "${dummy}p"
    ip link set "${dummy}p" up 2>/dev/null || true
  fi
  ip addr replace "$node_ip/32" dev "$dummy"
  ip link set "$dummy" up
  # Services' virtual addresses: kube-proxy rewrites them before routing; the route keeps
  # them off the machine's default route meanwhile.
  ip route replace "$service_cidr" dev "$dummy" src "$node_ip"
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  sysctl -qw net.bridge.bridge-nf-call-ip6tables=1
  # Pods talk to each other, to Services and to the node; nothing leaves the bridge
  # for the machine's network, and nothing comes in from it.
  iptables -N "$fw_chain" 2>/dev/null || iptables -F "$fw_chain"
  iptables -A "$fw_chain" -i "$bridge" ! -o "$bridge" -j DROP
  iptables -A "$fw_chain" ! -i "$bridge" -o "$bridge" -j DROP
  iptables -C FORWARD -j "$fw_chain" 2>/dev/null || iptables -I FORWARD 1 -j "$fw_chain"
  # And of the machine itself pods reach only the node's address (the API server through
  # the kubernetes Service, the DNS), not what listens on its other addresses.
  iptables -N "$fw_chain-IN" 2>/dev/null || iptables -F "$fw_chain-IN"
  iptables -A "$fw_chain-IN" -i "$bridge" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -A "$fw_chain-IN" -i "$bridge" -d "$node_ip" -j RETURN
  iptables -A "$fw_chain-IN" -i "$bridge" -j DROP
  iptables -C INPUT -j "$fw_chain-IN" 2>/dev/null || iptables -I INPUT 1 -j "$fw_chain-IN"
}

start_etcd() {
  mkdir -p "$state/etcd"
  chmod 0700 "$state/etcd"
  log "starting etcd"
  start_daemon etcd "--data-dir $state/etcd" etcd --name "$node_name" --data-dir "$state/etcd" \
    --listen-client-urls "http://$node_ip:2379" --advertise-client-urls "http://$node_ip:2379" \
    --listen-peer-urls "http://$node_ip:2380" --initial-advertise-peer-urls "http://$node_ip:2380" \
    --initial-cluster "$node_name=http://$node_ip:2380" --initial-cluster-state new \
    --logger zap --log-level warn
  wait_for 30 etcd curl -fsS "http://$node_ip:2379/health" || die "etcd did not become healthy; see $logs/etcd.log"
}

start_control_plane() {
  log "starting kube-apiserver"
  start_daemon kube-apiserver "--etcd-servers=http://$node_ip:2379" kube-apiserver \
    --etcd-servers="http://$node_ip:2379" \
    --bind-address="$node_ip" --advertise-address="$node_ip" --secure-port=6443 --insecure-port=0 \
    --service-cluster-ip-range="$service_cidr" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --cert-dir="$state/apiserver" --v=0
  wait_for 90 kube-apiserver kctl get --raw /readyz ||
    die "kube-apiserver did not become ready; see $logs/kube-apiserver.log"
  log "starting kube-controller-manager and kube-scheduler"
  start_daemon kube-controller-manager "--kubeconfig=$state/controller-manager.kubeconfig" \
    kube-controller-manager --kubeconfig="$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$state/controller-manager.kubeconfig" \
    --leader-elect=false --port=0 --bind-address="$node_ip" --secure-port=10257 \
    --cert-dir="$state/controller-manager" \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --allocate-node-cidrs=true --cluster-cidr="$pod_cidr" --node-cidr-mask-size="${pod_cidr#*/}" \
    --service-cluster-ip-range="$service_cidr" --profiling=false --v=0
  start_daemon kube-scheduler "--kubeconfig=$state/scheduler.kubeconfig" \
    kube-scheduler --kubeconfig="$state/scheduler.kubeconfig" \
    --authentication-kubeconfig="$state/scheduler.kubeconfig" \
    --authorization-kubeconfig="$state/scheduler.kubeconfig" \
    --leader-elect=false --port=0 --bind-address="$node_ip" --secure-port=10259 \
    --cert-dir="$state/scheduler" --profiling=false --v=0
}

start_containerd() {
  mkdir -p "$state/containerd/root" "$state/containerd/state" "$state/cni/net.d" "$state/cni/ipam" "$run"
  cat >"$state/containerd/config.toml" <<EOF
version = 2
root = "$state/containerd/root"
state = "$state/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$ctr_sock"
[ttrpc]
  address = "$ctr_sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # The machine withholds CAP_SYS_RESOURCE even from root: runc could not give the pause
  # container the kubelet's -998.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "$node_ip"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
    max_conf_num = 1
EOF
  cat >"$state/cni/net.d/10-stolon-k8s-node.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "stolon-k8s-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$pod_gateway"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$state/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  log "starting containerd"
  start_daemon containerd "--config $state/containerd/config.toml" \
    containerd --config "$state/containerd/config.toml" --log-level warn
  wait_for 30 containerd ctr -a "$ctr_sock" version || die "containerd did not start; see $logs/containerd.log"
}

start_kubelet() {
  mkdir -p "$state/kubelet/pki"
  : >"$state/kubelet/resolv.conf"
  cat >"$state/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: $node_ip
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $pki/kubelet-server.crt
tlsPrivateKeyFile: $pki/kubelet-server.key
rotateCertificates: false
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$node_ip]
# Pods get only the cluster DNS, not the machine's resolver or search domains.
resolvConf: $state/kubelet/resolv.conf
serializeImagePulls: false
evictionHard:
  memory.available: 100Mi
  nodefs.available: 2%
  nodefs.inodesFree: 2%
  imagefs.available: 2%
containerLogMaxSize: 10Mi
containerLogMaxFiles: 2
EOF
  log "starting the kubelet"
  start_daemon kubelet "--config=$state/kubelet/config.yaml" kubelet \
    --config="$state/kubelet/config.yaml" --kubeconfig="$state/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$ctr_sock" \
    --image-service-endpoint="unix://$ctr_sock" \
    --root-dir="$state/kubelet" --cert-dir="$state/kubelet/pki" \
    --hostname-override="$node_name" --node-ip="$node_ip" \
    --pod-infra-container-image="$pause_image" --v=0
}

start_kube_proxy() {
  mkdir -p "$state/kube-proxy"
  cat >"$state/kube-proxy/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $state/kube-proxy.kubeconfig
hostnameOverride: $node_name
bindAddress: $node_ip
healthzBindAddress: $node_ip:10256
metricsBindAddress: $node_ip:10249
clusterCIDR: $pod_cidr
mode: iptables
# NodePorts only on the node's own address, not on the machine's interfaces.
nodePortAddresses: ["$node_ip/32"]
iptables:
  minSyncPeriod: 1s
  syncPeriod: 30s
# Zeros: leave the machine's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  log "starting kube-proxy"
  start_daemon kube-proxy "--config=$state/kube-proxy/config.yaml" kube-proxy \
    --config="$state/kube-proxy/config.yaml" --v=0
}

start_dns() {
  mkdir -p "$state/dns"
  chmod 0755 "$state" "$state/dns"
  : >"$state/dns/hosts"
  chmod 0644 "$state/dns/hosts"
  log "starting the cluster DNS (dnsmasq on $node_ip:53) and the sync loop"
  start_daemon dnsmasq "--addn-hosts=$state/dns/hosts" dnsmasq --keep-in-foreground \
    --conf-file=/dev/null --no-resolv --no-hosts --addn-hosts="$state/dns/hosts" \
    --listen-address="$node_ip" --bind-interfaces --port=53 --local=/cluster.local/ \
    --domain-needed --local-ttl=1 --pid-file= --log-facility=-
  start_daemon sync "k8s-node.sh _sync $state" bash "$script_dir/k8s-node.sh" _sync "$state"
}

# The cluster DNS' hosts file and the recycling of released local volumes. Watches of
# Services, Endpoints and PersistentVolumes only say when to look again (their events are
# not read), so that an idle node costs nothing; a burst of events makes one pass.
sync_loop() {
  local curl_args=(-fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
  watch_events() { # resource
    while true; do
      curl "${curl_args[@]}" -N --max-time 600 "$api/api/v1/$1?watch=1" 2>/dev/null || true
      echo "watch of $1 restarts"
      sleep 1
    done
  }
  {
    watch_events services &
    watch_events endpoints &
    watch_events persistentvolumes &
    wait
  } | while read -r _; do
    local i
    for ((i = 0; i < 20; i++)); do read -r -t 0.1 _ || break; done
    sync_pass
  done
}

sync_pass() {
  local tmp="$state/dns/hosts.tmp" services endpoints pvs path name
  local get=(curl -fsS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
  if services=$("${get[@]}" "$api/api/v1/services") &&
    endpoints=$("${get[@]}" "$api/api/v1/endpoints"); then
    jq -nr --argjson s "$services" --argjson e "$endpoints" '
      def fqdn($o): "\($o.metadata.name).\($o.metadata.namespace).svc.cluster.local";
      ($s.items | map(select(.spec.clusterIP == "None"))
        | map({key: "\(.metadata.namespace)/\(.metadata.name)", value: (.spec.publishNotReadyAddresses // false)})
        | from_entries) as $headless
      | ($s.items[] | select(.spec.clusterIP != "None" and (.spec.clusterIP // "") != "")
          | "\(.spec.clusterIP) \(fqdn(.))"),
        ($e.items[] | . as $ep | "\(.metadata.namespace)/\(.metadata.name)" as $key
          | select($headless | has($key))
          | .subsets[]? | ((.addresses // []) + (if $headless[$key] then .notReadyAddresses // [] else [] end))[]
          | "\(.ip) \(fqdn($ep))", (select(.hostname) | "\(.ip) \(.hostname).\(fqdn($ep))"))
    ' 2>/dev/null | sort -u >"$tmp" || true
    if ! cmp -s "$tmp" "$state/dns/hosts"; then
      chmod 0644 "$tmp"
      mv "$tmp" "$state/dns/hosts"
      local dns_pid
      dns_pid=$(pid_of dnsmasq) && kill -HUP "$dns_pid" 2>/dev/null || true
    fi
  fi
  if pvs=$("${get[@]}" "$api/api/v1/persistentvolumes?labelSelector=stolon-k8s-node%3Dlocal"); then
    while read -r name path; do
      [ -n "$name" ] || continue
      case "$path" in "$state/volumes/"*) ;; *) continue ;; esac
      find "$path" -mindepth 1 -delete 2>/dev/null || true
      chown 0:0 "$path" && chmod a=rwx,g-s "$path"
      "${get[@]}" -X PATCH -H 'Content-Type: application/json-patch+json' \
        -d '[{"op": "remove", "path": "/spec/claimRef"}]' "$api/api/v1/persistentvolumes/$name" >/dev/null &&
        echo "recycled $name"
    done < <(jq -r '.items[] | select(.status.phase == "Released") | "\(.metadata.name) \(.spec.local.path)"' <<<"$pvs")
  fi
}

create_storage() {
  log "creating the StorageClass $storage_class and $volumes local volumes"
  local i objects
  objects="apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $storage_class
  annotations:
    storageclass.kubernetes.io/is-default-class: \"true\"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain"
  for ((i = 0; i < volumes; i++)); do
    install -d -m 0777 "$state/volumes/pv$i"
    objects+="
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-pv$i
  labels:
    stolon-k8s-node: local
spec:
  capacity:
    storage: $volume_size
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $storage_class
  volumeMode: Filesystem
  local:
    path: $state/volumes/pv$i
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - key: kubernetes.io/hostname
              operator: In
              values: [$node_name]"
  done
  kctl apply -f - >/dev/null <<<"$objects"
}

node_ready() {
  [ "$(kctl get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

something_left() {
  [ -d "$run" ] && [ -n "$(ls -A "$run" 2>/dev/null)" ] && return 0
  ip link show "$dummy" >/dev/null 2>&1 && return 0
  ip link show "$bridge" >/dev/null 2>&1 && return 0
  [ -f "$saved/sysctl" ]
}

up() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  if pid_of kubelet >/dev/null && pid_of kube-apiserver >/dev/null && node_ready; then
    log "the node is already up"
    echo "$admin_kubeconfig"
    return 0
  fi
  if something_left; then
    log "cleaning up what a previous run left"
    down_all
    started=$SECONDS
  fi
  ensure_packages
  ensure_programs
  local pause_tar stolon_tar
  pause_tar=$(pause_image_tar)
  stolon_tar=$(stolon_image_tar)
  choose_addresses
  mkdir -p "$state" "$run" "$logs"
  # From here on a failure leaves things for `down` (which `up` also runs next time).
  trap 'rc=$?; [ $rc -eq 0 ] || log "up failed; $0 down removes what it started (logs in $logs)"' EXIT
  record_machine_state
  setup_network
  make_pki
  start_etcd
  start_control_plane
  start_containerd
  import_image "$pause_tar" "$pause_image"
  import_image "$stolon_tar" "$stolon_image"
  start_kubelet
  start_kube_proxy
  start_dns
  log "waiting for the node to be Ready"
  wait_for 120 node kctl get node "$node_name" || die "the kubelet did not register the node; see $logs/kubelet.log"
  wait_for 120 node node_ready || die "the node did not become Ready; see $logs/kubelet.log"
  create_storage
  wait_for 60 "default service account" kctl get serviceaccount default -n default ||
    die "the controller manager made no default service account; see $logs/kube-controller-manager.log"
  trap - EXIT
  log "node $node_name is Ready ($node_ip; pods $pod_cidr; services $service_cidr; DNS $node_ip)"
  log "kubectl and helm: $bin; StorageClass: $storage_class (default)"
  log "export KUBECONFIG=$admin_kubeconfig"
  echo "$admin_kubeconfig"
}

# ---------------------------------------------------------------------------------------
# down

delete_workloads() {
  pid_of kube-apiserver >/dev/null && pid_of kubelet >/dev/null || return 0
  kctl get --raw /readyz >/dev/null 2>&1 || return 0
  log "deleting the pods (controllers orphaned first)"
  local kind
  for kind in deployments statefulsets daemonsets replicasets jobs cronjobs replicationcontrollers; do
    kctl delete "$kind" --all -A --cascade=orphan --wait=false >/dev/null 2>&1 || true
  done
  kctl delete pods --all -A --grace-period=1 --wait=false >/dev/null 2>&1 || true
  wait_for 40 "no pods" bash -c "[ -z \"\$(kubectl --kubeconfig '$admin_kubeconfig' get pods -A -o name 2>/dev/null)\" ]" ||
    log "some pods are still there; removing their containers directly"
}

remove_containers() {
  pid_of containerd >/dev/null || return 0
  local c=(ctr -a "$ctr_sock" -n k8s.io) id
  local tasks
  tasks=$("${c[@]}" tasks ls -q 2>/dev/null || true)
  if [ -n "$tasks" ]; then
    log "killing $(wc -w <<<"$tasks") remaining containers"
    for id in $tasks; do "${c[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 1
    for id in $tasks; do "${c[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true; done
  fi
  for id in $("${c[@]}" containers ls -q 2>/dev/null || true); do
    "${c[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
}

# containerd's shims outlive containerd; ours name our socket on their command line.
kill_shims() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *containerd-shim*"-address $ctr_sock "*)
        kill -KILL "${p#/proc/}" 2>/dev/null && log "killed a leftover shim (pid ${p#/proc/})" ;;
    esac
  done
}

unmount_all() {
  local m count=0
  # deepest first
  while read -r m; do
    umount -l "$m" 2>/dev/null && count=$((count + 1))
  done < <(awk -v s="$state/" -v n="/run/netns/cni-" '
      { p = $5; gsub(/\\040/, " ", p) }
      index(p, s) == 1 || index(p, n) == 1 { print length(p) " " p }' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
  [ $count -eq 0 ] || log "unmounted $count file systems"
  rm -f /run/netns/cni-* 2>/dev/null || true
}

# Removes every rule that jumps to a chain of ours, then the chains (KUBE-*, CNI-*, ours).
clean_iptables() {
  local tool table chain rule
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$tool" -t "$table" -S >/dev/null 2>&1 || continue
      while read -r rule; do
        eval "set -- $rule"
        shift # -A
        "$tool" -t "$table" -D "$@" 2>/dev/null || true
      done < <("$tool" -t "$table" -S 2>/dev/null |
        grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ' |
        grep -E -- "-j (KUBE-|CNI-|$fw_chain)" || true)
      for chain in $("$tool" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-|'"$fw_chain"')/ {print $2}'); do
        "$tool" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$tool" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-|'"$fw_chain"')/ {print $2}'); do
        "$tool" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

remove_cgroups() {
  local hierarchy dir left=0
  for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    dir="${hierarchy%/}/kubepods"
    [ -d "$dir" ] || continue
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$dir" ] || left=1
  done
  [ $left -eq 0 ] || log "some kubepods cgroups are still in use"
}

restore_machine_state() {
  local line d
  if [ -f "$saved/sysctl" ]; then
    while read -r line; do
      [ -n "$line" ] && sysctl -qw "$line" 2>/dev/null || true
    done <"$saved/sysctl"
  fi
  if [ -f "$saved/absent-dirs" ]; then
    while read -r d; do
      [ -n "$d" ] && rm -rf "$d"
    done <"$saved/absent-dirs"
  fi
  rm -rf "$saved"
}

down_all() {
  delete_workloads
  stop_daemon sync 5
  stop_daemon dnsmasq 5
  stop_daemon kube-proxy 10
  stop_daemon kubelet 15
  stop_daemon kube-scheduler 10
  stop_daemon kube-controller-manager 10
  remove_containers
  stop_daemon containerd 15
  kill_shims
  stop_daemon kube-apiserver 15
  stop_daemon etcd 15
  if [ -x "$bin/kube-proxy" ] && [ -f "$saved/sysctl" ]; then
    "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  clean_iptables
  unmount_all
  ip link del "$bridge" 2>/dev/null || true
  ip link del "$dummy" 2>/dev/null || true
  remove_cgroups
  restore_machine_state
  # Everything but the imported images (containerd's root) and the last logs.
  rm -rf "$state"/{etcd,pki,kubelet,volumes,run,dns,cni,apiserver,controller-manager,scheduler,kube-proxy} \
    "$state"/containerd/state "$state"/*.kubeconfig
}

down() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  local purge=false
  [ "${1:-}" != --purge ] || purge=true
  [ -d "$state" ] || ip link show "$dummy" >/dev/null 2>&1 || { log "nothing to do"; return 0; }
  down_all
  if $purge; then
    rm -rf "$state"
    log "removed $state"
  fi
  log "down"
}

# ---------------------------------------------------------------------------------------
# status

status() {
  local name pid any=false
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy dnsmasq sync; do
    if pid=$(pid_of "$name"); then
      printf '%-24s running (pid %s, %s MB)\n' "$name" "$pid" "$(($(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024))"
      any=true
    else
      printf '%-24s not running\n' "$name"
    fi
  done
  if ip link show "$dummy" >/dev/null 2>&1; then
    echo "node address           $node_ip on $dummy; pods $pod_cidr on $bridge; services $service_cidr"
  fi
  if $any && [ -f "$admin_kubeconfig" ]; then
    if node_ready; then echo "node $node_name          Ready"; else echo "node $node_name          not Ready"; fi
    echo "kubeconfig             $admin_kubeconfig"
    kctl get pods -A -o wide 2>/dev/null || true
  fi
  $any
}

case "${1:-}" in
  up) up ;;
  down) shift; down "$@" ;;
  status) status ;;
  images)
    [ "$(id -u)" -eq 0 ] || die "run as root"
    ensure_packages
    ensure_programs
    pause_image_tar
    stolon_image_tar
    ;;
  _sync) sync_loop ;;
  *)
    echo "usage: $0 up|down [--purge]|status|images" >&2
    exit 2
    ;;
esac

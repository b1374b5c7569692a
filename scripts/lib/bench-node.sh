# A kubeadm control-plane node with a big etcd, for benchmarks. Sourced by scripts/bench.d/*.
# big_node DIR MIB: lays out DIR/node (kubeadm PKI and manifests), starts etcd 3.5.1 from its static pod
# manifest, fills it with about MIB MiB of Kubernetes-like objects. Sets: root, client_port, etcd_pid,
# etcdctl (an array: the etcdctl command line with the node's client certificate).

big_node() {
  local dir=$1 mib=$2 repo peer_port txns
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  root=$dir/node
  client_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  peer_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  "$repo/tests/fixtures/kubeadm-node" "$root" master0 127.0.1.10 "$client_port" "$peer_port"
  # Big transactions without fsync: the point is a big db quickly, not a realistic write path.
  "$repo/tests/fixtures/run-static-etcd" "$root" "$CPR_ETCD35_BIN_DIR/etcd" --quota-backend-bytes $((8 << 30)) \
    --max-txn-ops 100000 --max-request-bytes $((64 << 20)) --unsafe-no-fsync > "$dir/etcd.log" 2>&1 &
  etcd_pid=$!
  local pki=$root/etc/kubernetes/pki
  etcdctl=(env ETCDCTL_API=3 "$CPR_ETCD35_BIN_DIR/etcdctl" --endpoints="https://127.0.0.1:$client_port"
    --cacert="$pki/etcd/ca.crt" --cert="$pki/etcd/healthcheck-client.crt" --key="$pki/etcd/healthcheck-client.key")
  until "${etcdctl[@]}" endpoint health >/dev/null 2>&1; do sleep 0.2; done
  "$repo/tests/fixtures/seed-etcd" "$root" "$CPR_ETCD35_BIN_DIR/etcdctl" "https://127.0.0.1:$client_port" bench 127.0.1.10 10
  # Values like Kubernetes objects: structured text with a random part (compresses about 2:1).
  txns=$(( mib * 1024 / (150 * 10) + 1 ))
  echo "filling etcd with ~${mib} MiB ($txns transactions of 150 x 10 KiB)"
  for ((t = 0; t < txns; t++)); do
    python3 - "$t" <<'PY' | "${etcdctl[@]}" txn > /dev/null
import os, sys
t = int(sys.argv[1])
out = [""]
for i in range(150):
    body = '{"kind":"ConfigMap","metadata":{"name":"cm-%d-%d"},"data":{"blob":"%s"}}' % (t, i, os.urandom(2560).hex() + "a" * 4900)
    out.append("put /registry/configmaps/bench/cm-%05d-%03d %s" % (t, i, body))
out += ["", "", ""]
sys.stdout.write("\n".join(out))
PY
  done
  "${etcdctl[@]}" endpoint status -w table
}

# median: the middle of the numbers on stdin.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# A kubeadm control-plane node with a big etcd, for benchmarks. Sourced by scripts/bench.d/*.
# big_node DIR MIB: lays out DIR/node (kubeadm PKI and manifests), writes a db of about MIB MiB of
# Kubernetes-like objects directly in bbolt's format (SHAPE, see below), restores it into the node's
# etcd data dir with `cpr etcd snapshot restore`, starts etcd 3.5.1 from its static pod manifest on it
# and puts kubeadm's objects in (seed-etcd): every snapshot a bench takes is streamed by a real etcd.
# Sets: root, client_port, etcd_pid, etcdctl (an array: the etcdctl command line with the node's
# client certificate), expected (DIR/expected: what the db holds, see examples/bbolt-snapshot.rs).
#
# SHAPE large (default): 10 KiB values, each key written once. SHAPE small: 0.5-4 KiB objects, the
# first quarter rewritten, a thousand deleted, a compaction (tests/common/bbolt_snapshot.rs).
# Writing the db takes seconds where filling etcd through etcdctl took minutes per GiB. Its leaf
# pages are full where etcd fills them to 90 % and leaves free pages after a compaction: the same
# data in about 10 % fewer pages than the etcd-filled dbs of earlier runs.

big_node() {
  local dir=$1 mib=$2 repo peer_port peer_url
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  root=$dir/node
  client_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  peer_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  peer_url=https://127.0.1.10:$peer_port
  "$repo/tests/fixtures/kubeadm-node" "$root" master0 127.0.1.10 "$client_port" "$peer_port"
  (cd "$repo" && cargo build --release --quiet --example bbolt-snapshot)
  local release=$repo/target/x86_64-unknown-linux-gnu/release
  echo "writing a ~${mib} MiB db of ${SHAPE:-large} objects"
  expected=$dir/expected
  "$release/examples/bbolt-snapshot" "$dir/written.db" "$mib" "${SHAPE:-large}" > "$expected"
  "$release/cpr" etcd snapshot restore "$dir/written.db" --data-dir "$root/var/lib/etcd" --name master0 \
    --initial-cluster "master0=$peer_url" --initial-advertise-peer-urls "$peer_url" > /dev/null
  rm "$dir/written.db"
  # The quota past the db: seed-etcd's writes would otherwise raise etcd's NOSPACE alarm at 8 GiB.
  "$repo/tests/fixtures/run-static-etcd" "$root" "$CPR_ETCD35_BIN_DIR/etcd" \
    --quota-backend-bytes $(((mib + 1024) << 20)) > "$dir/etcd.log" 2>&1 &
  etcd_pid=$!
  local pki=$root/etc/kubernetes/pki
  etcdctl=(env ETCDCTL_API=3 "$CPR_ETCD35_BIN_DIR/etcdctl" --endpoints="https://127.0.0.1:$client_port"
    --cacert="$pki/etcd/ca.crt" --cert="$pki/etcd/healthcheck-client.crt" --key="$pki/etcd/healthcheck-client.key")
  until "${etcdctl[@]}" endpoint health >/dev/null 2>&1; do
    kill -0 "$etcd_pid" 2>/dev/null || { echo "etcd on the written db died:" >&2; tail -5 "$dir/etcd.log" >&2; return 1; }
    sleep 0.5
  done
  "$repo/tests/fixtures/seed-etcd" "$root" "$CPR_ETCD35_BIN_DIR/etcdctl" "https://127.0.0.1:$client_port" bench 127.0.1.10 10
  "${etcdctl[@]}" endpoint status -w table
}

# median: the middle of the numbers on stdin.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# A kubeadm control-plane node with a big etcd, for benchmarks. Sourced by scripts/bench.d/*.
# big_node DIR MIB: lays out DIR/node (kubeadm PKI and manifests), starts etcd 3.5.1 from its static pod
# manifest, fills it with about MIB MiB of Kubernetes-like objects (SHAPE, see fill_etcd). Sets: root,
# client_port, etcd_pid, etcdctl (an array: the etcdctl command line with the node's client certificate).

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
  fill_etcd "$mib" "${SHAPE:-large}"
  "${etcdctl[@]}" endpoint status -w table
}

# fill_etcd MIB SHAPE: about MIB MiB of values in transactions of ~1.5 MB, one Python process driving
# etcdctl. SHAPE large: 10 KiB ConfigMaps, each written once. SHAPE small: 0.5-4 KiB objects, many
# keys, the last third of the transactions rewriting the first third's keys (a history of
# revisions), then a compaction at four fifths of the writes (history below it freed, above kept).
# Values are structured text with a random part (they compress about 2:1, like Kubernetes objects).
fill_etcd() {
  local mib=$1 shape=$2 compact_at
  echo "filling etcd with ~${mib} MiB of $shape objects"
  compact_at=$(python3 - "$mib" "$shape" "${etcdctl[@]}" <<'PY'
import os, random, subprocess, sys
mib, shape, etcdctl = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
random.seed(16)
sizes = (lambda: 10 * 1024) if shape == "large" else (lambda: random.randint(512, 4096))
per_txn = 1500 * 1024
txns = mib * 1024 * 1024 // per_txn + 1
rewrite_from = txns - txns // 3 if shape == "small" else txns
compact_at = None
for t in range(txns):
    keyspace = t - rewrite_from if t >= rewrite_from else t
    out, size, i = [""], 0, 0
    while size < per_txn:
        n = sizes()
        random_part = os.urandom(n // 4).hex()
        body = '{"kind":"Pod","metadata":{"name":"p-%d-%d","resourceVersion":"%d"},"spec":"%s%s"}' % (
            keyspace, i, t, random_part, "a" * (n - len(random_part)))
        out.append("put /registry/pods/bench-%05d/p-%04d %s" % (keyspace, i, body))
        size += n
        i += 1
    out += ["", "", ""]
    subprocess.run(etcdctl + ["txn"], input="\n".join(out).encode(), stdout=subprocess.DEVNULL, check=True)
    if shape == "small" and t == txns * 4 // 5:
        status = subprocess.run(etcdctl + ["endpoint", "status", "-w", "json"], capture_output=True, check=True)
        compact_at = status.stdout.decode().split('"revision":')[1].split(",")[0]
print(compact_at or "")
PY
  )
  if [ -n "$compact_at" ]; then "${etcdctl[@]}" compact "$compact_at" > /dev/null; fi
}

# median: the middle of the numbers on stdin.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

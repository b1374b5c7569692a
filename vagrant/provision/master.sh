#!/usr/bin/env bash
# The control-plane node: a new cluster (`kubeadm init`), or with INITIALIZE_MASTERS=N the old one
# brought back by `cpr restore` from /vagrant/tmp/backup. Either way, cpr then backs the node up
# every hour (cpr-backup.timer) into that shared directory, and workers find their join command there.
# Environment (from the Vagrantfile): KUBERNETES_VERSION, NODE_IP, NODE_NAME, POD_NETWORK, NODE_CIDR,
# CALICO_VERSION, INITIALIZE_MASTERS (Y or N), CPR_BINARY, CPR_BOX_READY (1: the cpr box, which holds cpr
# and its units, and whose kubeadm and kubelet are doubles without a container runtime: no Calico, no
# kubectl, no join command for workers).
set -euo pipefail
: "${KUBERNETES_VERSION:?}" "${NODE_IP:?}" "${NODE_NAME:?}" "${POD_NETWORK:?}" "${NODE_CIDR:?}"
: "${CALICO_VERSION:?}" "${INITIALIZE_MASTERS:?}"
CPR_BOX_READY=${CPR_BOX_READY:-0}
[ "$CPR_BOX_READY" = 1 ] || : "${CPR_BINARY:?}"

shared=/vagrant/tmp
store_dir=$shared/backup
units=/cpr/image/systemd
[ "$CPR_BOX_READY" = 1 ] && units=/usr/local/share/cpr/systemd
mkdir -p "$store_dir"

install_cpr() {
  if [ "$CPR_BOX_READY" = 1 ]; then
    if [ ! -x /usr/local/sbin/cpr ]; then
      echo "master.sh: CPR_BOX_READY=1 but the box has no /usr/local/sbin/cpr; use the cpr box (image/build-vagrant-box) or unset CPR_BOX_READY" >&2
      exit 1
    fi
    echo "master.sh: cpr from the box ($(cat /etc/cpr-box-release 2>/dev/null || echo "no /etc/cpr-box-release")): /usr/local/sbin/cpr"
  elif [ ! -x "$CPR_BINARY" ]; then
    echo "master.sh: no cpr binary at $CPR_BINARY. On the host, run 'cargo build --release' in the repository, then 'vagrant provision $NODE_NAME'" >&2
    exit 1
  else
    install -m 0755 "$CPR_BINARY" /usr/local/sbin/cpr
  fi
  install -d -m 0700 /etc/cpr
  cat > /etc/cpr/config.yaml <<CONFIG
version: 1
store:
  url: file://$store_dir
retention:
  keepLast: 24
  keepDaily: 7
  keepWeekly: 4
CONFIG
}

install_backup_timer() {
  for unit in cpr-backup.service cpr-backup.timer; do
    if [ ! -f "$units/$unit" ]; then
      echo "master.sh: $units/$unit is missing; the repository's image/systemd holds the units" >&2
      exit 1
    fi
    install -m 0644 "$units/$unit" /etc/systemd/system/
  done
  # In the lab: prune with the config's retention and keep node_exporter-style metrics after each run.
  mkdir -p /etc/systemd/system/cpr-backup.service.d /var/lib/node_exporter/textfile_collector
  cat > /etc/systemd/system/cpr-backup.service.d/lab.conf <<'DROPIN'
[Service]
ExecStart=
ExecStart=/usr/local/sbin/cpr backup --prune --metrics-file /var/lib/node_exporter/textfile_collector/cpr.prom
DROPIN
  systemctl daemon-reload
  systemctl enable --now cpr-backup.timer
}

kubeconfig_for_vagrant() {
  install -d -o vagrant -g vagrant /home/vagrant/.kube
  install -m 0600 -o vagrant -g vagrant /etc/kubernetes/admin.conf /home/vagrant/.kube/config
}

wait_for_apiserver() {
  if [ "$CPR_BOX_READY" = 1 ]; then
    # No kubectl in the box; kubeadm's wait-control-plane (and cpr finish) waited for /healthz. cpr check:
    # etcd answers through kubeadm's client certificate, and the certificates are valid.
    /usr/local/sbin/cpr check
    return
  fi
  for _ in $(seq 60); do
    kubectl --kubeconfig /etc/kubernetes/admin.conf get --raw /readyz >/dev/null 2>&1 && return 0
    sleep 5
  done
  echo "master.sh: the API server did not become ready within 5 minutes" >&2
  exit 1
}

install_cpr

if [ -f /etc/kubernetes/admin.conf ]; then
  echo "master.sh: $NODE_NAME already runs a control plane; nothing to initialise or restore"
elif [ "$INITIALIZE_MASTERS" = Y ]; then
  cat > /root/kubeadm.yaml <<KUBEADM
apiVersion: kubeadm.k8s.io/v1beta3
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: $NODE_IP
  bindPort: 6443
nodeRegistration:
  name: $NODE_NAME
  criSocket: unix:///var/run/containerd/containerd.sock
  kubeletExtraArgs:
    node-ip: $NODE_IP
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
kubernetesVersion: v$KUBERNETES_VERSION
controlPlaneEndpoint: $NODE_IP:6443
networking:
  podSubnet: $POD_NETWORK
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
KUBEADM
  kubeadm init --config /root/kubeadm.yaml
  wait_for_apiserver
  export KUBECONFIG=/etc/kubernetes/admin.conf
  if [ "$CPR_BOX_READY" = 1 ]; then
    echo "master.sh: CPR_BOX_READY=1: no container runtime in the box, so no pod network (Calico)"
  else
    kubectl apply -f "https://raw.githubusercontent.com/projectcalico/calico/${CALICO_VERSION}/manifests/calico.yaml"
    # Two NICs per VM: Calico must pick the private network's, not VirtualBox's NAT (10.0.2.15 everywhere).
    kubectl -n kube-system set env daemonset/calico-node "IP_AUTODETECTION_METHOD=cidr=$NODE_CIDR"
  fi
else
  echo "master.sh: INITIALIZE_MASTERS=N: restoring $NODE_NAME from $store_dir"
  ls -l "$store_dir"/*/"$NODE_NAME"/ || {
    echo "master.sh: no backup of $NODE_NAME in $store_dir; take one first (README, \"The Vagrant lab\")" >&2
    exit 1
  }
  # cpr restore runs phase 1, then `cpr finish` (kubeadm init with the bundle's configuration);
  # SUDO_USER gets the admin kubeconfig as well as root.
  SUDO_USER=vagrant /usr/local/sbin/cpr restore --store "file://$store_dir"
  wait_for_apiserver
fi

kubeconfig_for_vagrant
# Workers join with a fresh token; the command (token and CA hash) goes through the shared folder.
if [ "$CPR_BOX_READY" = 1 ]; then
  echo "master.sh: CPR_BOX_READY=1: the box's kubeadm double cannot create join tokens; no workers"
else
  kubeadm token create --print-join-command > "$shared/join-command.sh"
  chmod 0600 "$shared/join-command.sh"
fi
install_backup_timer
systemctl start cpr-backup.service
/usr/local/sbin/cpr list --store "file://$store_dir"

#!/usr/bin/env bash
# Every node: containerd, and kubelet + kubeadm + kubectl at the pinned version from pkgs.k8s.io,
# with the kubelet on the private network's address (VirtualBox's NAT address is the same on every VM).
# Environment (from the Vagrantfile): KUBERNETES_VERSION, KUBERNETES_MINOR, NODE_IP, CPR_BOX_READY (1: the
# box already holds kubelet and kubeadm, as the cpr box of image/build-vagrant-box does: nothing is installed).
set -euo pipefail
: "${KUBERNETES_VERSION:?}" "${KUBERNETES_MINOR:?}" "${NODE_IP:?}"
CPR_BOX_READY=${CPR_BOX_READY:-0}
export DEBIAN_FRONTEND=noninteractive

# kubeadm's preflight: no swap, bridged traffic through iptables, forwarding on.
swapoff -a
sed -i '/\sswap\s/s/^/#/' /etc/fstab
printf 'overlay\nbr_netfilter\n' > /etc/modules-load.d/k8s.conf
modprobe overlay
modprobe br_netfilter
cat > /etc/sysctl.d/k8s.conf <<SYSCTL
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
SYSCTL
sysctl --system >/dev/null

kubelet_on_node_ip() {
  echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" > /etc/default/kubelet
  systemctl enable kubelet >/dev/null
}

if [ "$CPR_BOX_READY" = 1 ]; then
  for tool in kubeadm kubelet; do
    command -v "$tool" >/dev/null || {
      echo "common.sh: CPR_BOX_READY=1 but the box has no $tool; use the cpr box (image/build-vagrant-box) or unset CPR_BOX_READY" >&2
      exit 1
    }
  done
  echo "common.sh: CPR_BOX_READY=1: kubeadm $(kubeadm version -o short) and kubelet come with the box; nothing to install"
  kubelet_on_node_ip
  exit 0
fi

apt-get update -qq
apt-get install -y -qq apt-transport-https ca-certificates curl gnupg lsb-release >/dev/null
install -d -m 0755 /etc/apt/keyrings

# containerd from Docker's repository: Ubuntu 18.04's own is too old for the CRI v1 API that
# Kubernetes 1.26+ requires.
if [ ! -f /etc/apt/keyrings/docker.gpg ]; then
  curl -fsSL https://download.docker.com/linux/ubuntu/gpg | gpg --dearmor -o /etc/apt/keyrings/docker.gpg
fi
echo "deb [signed-by=/etc/apt/keyrings/docker.gpg] https://download.docker.com/linux/ubuntu $(lsb_release -cs) stable" \
  > /etc/apt/sources.list.d/docker.list

# kubelet, kubeadm, kubectl from the pinned minor's repository.
if [ ! -f "/etc/apt/keyrings/kubernetes-${KUBERNETES_MINOR}.gpg" ]; then
  curl -fsSL "https://pkgs.k8s.io/core:/stable:/v${KUBERNETES_MINOR}/deb/Release.key" \
    | gpg --dearmor -o "/etc/apt/keyrings/kubernetes-${KUBERNETES_MINOR}.gpg"
fi
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-${KUBERNETES_MINOR}.gpg] https://pkgs.k8s.io/core:/stable:/v${KUBERNETES_MINOR}/deb/ /" \
  > /etc/apt/sources.list.d/kubernetes.list

apt-get update -qq
package_version=$(apt-cache madison kubeadm | awk -v v="${KUBERNETES_VERSION}-" '$3 ~ "^"v { print $3; exit }')
if [ -z "$package_version" ]; then
  echo "common.sh: kubeadm ${KUBERNETES_VERSION} is not in the v${KUBERNETES_MINOR} repository; pick another KUBERNETES_VERSION" >&2
  exit 1
fi
apt-mark unhold kubelet kubeadm kubectl >/dev/null 2>&1 || true
apt-get install -y -qq containerd.io "kubelet=${package_version}" "kubeadm=${package_version}" \
  "kubectl=${package_version}" >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null

# containerd's packaged config disables the CRI plugin; kubeadm's kubelet uses the systemd cgroup driver.
containerd config default > /etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
systemctl restart containerd
systemctl enable --now containerd >/dev/null

kubelet_on_node_ip

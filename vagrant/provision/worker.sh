#!/usr/bin/env bash
# A worker joins with the command the master left in the shared folder (a token and the CA's hash).
set -euo pipefail
join=/vagrant/tmp/join-command.sh

if [ -f /etc/kubernetes/kubelet.conf ]; then
  echo "worker.sh: $(hostname) has already joined"
  exit 0
fi
if [ ! -f "$join" ]; then
  echo "worker.sh: $join is missing: bring up the master first (vagrant up u1804-simple-master0)" >&2
  exit 1
fi
bash "$join"

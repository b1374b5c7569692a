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

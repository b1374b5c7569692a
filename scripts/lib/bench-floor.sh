# The physical floor of each step, measured on the bench's own files in the same run, and the line
# every bench prints against it. Sourced by scripts/bench.d/*.
#
# A floor is what no implementation of the step can beat on this machine: writing the db at all
# (direct I/O + fdatasync, past the page cache as cpr writes it), decompressing the bundle at all,
# one SHA-256 pass with the fastest implementation here (OpenSSL) where the format demands one.
#
# SHA_NI=hidden runs a bench as on a CPU without SHA extensions, on one that has them: cpr is built with
# ring's detection of them removed and the sha2 crate's portable code (what each picks on such a CPU),
# and OpenSSL is told they are absent (OPENSSL_ia32cap), so its floor is its code for such a CPU. etcd
# 3.5.1 and etcdutl (Go 1.16) never use them: the reference tools' figures do not change.
SHA_NI=${SHA_NI:-detected}
case $SHA_NI in
  detected) ;;
  hidden) export OPENSSL_ia32cap=:~0x20000000 ;;  # CPUID.7.EBX bit 29, SHA
  *) echo "SHA_NI=$SHA_NI: use detected (the default) or hidden" >&2; exit 1 ;;
esac

# bench_cpr REPO: builds the release cpr the bench runs and prints its path: with SHA_NI=hidden, a
# build under target/sha-hidden from a copy of the working tree, so that the lock file of the patched
# ring stays out of the repository (the copy keeps mtimes: cargo rebuilds only what changed).
bench_cpr() {
  local repo=$1 dir=$1/target/sha-hidden ring_dir ring intel
  (cd "$repo" && cargo build --release --quiet)
  if [ "$SHA_NI" = detected ]; then
    echo "$repo/target/x86_64-unknown-linux-gnu/release/cpr"; return
  fi
  ring_dir=$(cd "$repo" && cargo metadata --format-version 1 --locked | python3 -c '
import json, os, sys
print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] if p["name"] == "ring"))')
  ring=$dir/$(basename "$ring_dir")
  if [ ! -d "$ring" ]; then
    mkdir -p "$dir"; rm -rf "$ring.tmp"; cp -a "$ring_dir" "$ring.tmp"
    intel=$ring.tmp/src/cpu/intel.rs
    # The one check that sets Shift::Sha (src/cpu/intel.rs, cpuid_to_caps_and_set_c_flags); another
    # ring must be read again before it is patched.
    [ "$(grep -c 'if check(extended_features_ebx, 29) {' "$intel")" = 1 ] ||
      { echo "bench_cpr: $intel has no single SHA check to remove; read ring's detection again" >&2; exit 1; }
    sed -i 's/if check(extended_features_ebx, 29) {/if false \&\& check(extended_features_ebx, 29) {/' "$intel"
    mv "$ring.tmp" "$ring"
  fi
  rm -rf "$dir/src"; mkdir -p "$dir/src"
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp -a --parents -t "$dir/src")
  # ring is a path dependency here, so its lint warnings are printed: kept in a log unless it fails.
  (cd "$dir/src" && cargo build --release --quiet --features sha2/force-soft --target-dir "$dir/target" \
    --config "patch.crates-io.ring.path=\"$ring\"") > "$dir/build.log" 2>&1 ||
    { cat "$dir/build.log" >&2; echo "bench_cpr: the SHA_NI=hidden build failed" >&2; exit 1; }
  echo "$dir/target/x86_64-unknown-linux-gnu/release/cpr"
}

# cpu_line: the CPU model and the features that decide hashing speed (sha_ni, avx2, avx512f).
cpu_line() {
  local model features f
  model=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
  features=
  for f in sha_ni avx2 avx512f; do
    if grep -q -w "$f" /proc/cpuinfo; then features+=" $f"; else features+=" no-$f"; fi
  done
  [ "$SHA_NI" = detected ] || features+=" (SHA_NI=hidden: cpr and OpenSSL run their code for a CPU without sha_ni)"
  echo "cpu: $model,$features, $(nproc) cores, load$(cut -d' ' -f1-3 /proc/loadavg | sed 's/^/ /')"
}

# timed CMD...: runs CMD, prints "seconds peak_rss_kib".
timed() {
  local t
  t=$(mktemp)
  /usr/bin/time -f '%e %M' -o "$t" "$@" > /dev/null 2>&1 || { echo "failed: $*" >&2; cat "$t" >&2; rm -f "$t"; return 1; }
  cat "$t"; rm -f "$t"
}

# floor_write FILE DIR: seconds to write FILE's bytes into DIR with direct I/O and fdatasync. 64 MiB
# writes, which the kernel splits into requests that are in flight together: 4 MiB ones, one at a
# time, wrote 2 GiB in 1.94 s where these took 1.28-1.45 s, a floor too easy to beat.
floor_write() {
  local out=$2/floor-write.db secs
  sync
  read -r secs _ < <(timed dd if="$1" of="$out" bs=64M oflag=direct conv=fdatasync status=none)
  rm -f "$out"; sync
  echo "$secs"
}

# floor_unzstd BUNDLE: seconds to decompress BUNDLE to /dev/null.
floor_unzstd() {
  local secs
  read -r secs _ < <(timed zstd -dq -c "$1" -o /dev/null)
  echo "$secs"
}

# floor_sha256 FILE: seconds of one OpenSSL SHA-256 pass over FILE (read from the page cache).
floor_sha256() {
  local secs
  cat "$1" > /dev/null
  read -r secs _ < <(timed openssl dgst -sha256 "$1")
  echo "$secs"
}

# max A B: the larger number.
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b) ? a : b }'; }

# against_floor STEP SECONDS FLOOR RSS_KIB WHAT: one line per step, the same in every bench.
against_floor() {
  awk -v step="$1" -v t="$2" -v f="$3" -v rss="$4" -v what="$5" 'BEGIN {
    printf "floor: %-22s %7.2f s  floor %6.2f s (%s)  ratio %.2f (goal <= 1.30)  peak RSS %d MiB\n",
      step, t, f, what, t / f, rss / 1024 }'
}

# The physical floor of each step, measured on the bench's own files in the same run, and the line
# every bench prints against it. Sourced by scripts/bench.d/*.
#
# A floor is what no implementation of the step can beat on this machine: writing the db at all
# (direct I/O + fdatasync, past the page cache as cpr writes it), decompressing the bundle at all,
# one SHA-256 pass with the fastest implementation here (OpenSSL) where the format demands one.

# cpu_line: the CPU model and the features that decide hashing speed (sha_ni, avx2, avx512f).
cpu_line() {
  local model features f
  model=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
  features=
  for f in sha_ni avx2 avx512f; do
    if grep -q -w "$f" /proc/cpuinfo; then features+=" $f"; else features+=" no-$f"; fi
  done
  echo "cpu: $model,$features, $(nproc) cores, load$(cut -d' ' -f1-3 /proc/loadavg | sed 's/^/ /')"
}

# timed CMD...: runs CMD, prints "seconds peak_rss_kib".
timed() {
  local t
  t=$(mktemp)
  /usr/bin/time -f '%e %M' -o "$t" "$@" > /dev/null 2>&1 || { echo "failed: $*" >&2; cat "$t" >&2; rm -f "$t"; return 1; }
  cat "$t"; rm -f "$t"
}

# floor_write FILE DIR: seconds to write FILE's bytes into DIR with direct I/O and fdatasync.
floor_write() {
  local out=$2/floor-write.db secs
  sync
  read -r secs _ < <(timed dd if="$1" of="$out" bs=4M oflag=direct conv=fdatasync status=none)
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

# shellcheck shell=bash
# The supply-chain check of scripts/test: cargo-deny (deny.toml) on Cargo.lock, offline. Advisories
# come from the RustSec snapshot beside the checkout (or beside the local checkout a clone was made from;
# CPR_ADVISORY_SNAPSHOT overrides), whatever is
# there on this run; cargo-deny reads a git checkout, so a throwaway one is made from the snapshot,
# its commit dated as the snapshot is (deny.toml's maximum-db-staleness counts from that date).
# A vulnerability, an unsound or unmaintained crate not excused in deny.toml, a licence outside
# deny.toml's list or an unknown source fails the check. Sourced by scripts/test after deps.sh.

# The snapshot beside the checkout; in a clone of a local checkout (a fresh-clone run: `git clone . "$d"`),
# beside the checkout it was cloned from.
advisory_snapshot() {
  local beside=../shared/rustsec-advisory-db origin
  origin=$(git config --get remote.origin.url 2>/dev/null || true)
  if [ -n "${CPR_ADVISORY_SNAPSHOT:-}" ]; then
    echo "$CPR_ADVISORY_SNAPSHOT"
  elif [ ! -f "$beside/SNAPSHOT" ] && [ -d "$origin" ] && [ -f "$origin/$beside/SNAPSHOT" ]; then
    echo "$origin/$beside"
  else
    echo "$beside"
  fi
}
# Where cargo-deny 0.20 looks for the RustSec database under db-path (named after its URL).
ADVISORY_DB_DIR=advisory-db-3157b0e258782691

check_supply_chain() {
  local snapshot dbs db stamp status=0
  snapshot=$(advisory_snapshot)
  if [ ! -f "$snapshot/SNAPSHOT" ]; then
    echo "supply chain: no RustSec snapshot at $snapshot (a SNAPSHOT file is missing). Put one there or set CPR_ADVISORY_SNAPSHOT" >&2
    return 1
  fi
  stamp=$(sed -n 's/.*(\([0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}\)).*/\1/p' "$snapshot/SNAPSHOT" | head -1)
  if [ -z "$stamp" ]; then
    echo "supply chain: $snapshot/SNAPSHOT names no date as (YYYY-MM-DD); cannot tell how old the advisories are" >&2
    return 1
  fi
  dbs=$(mktemp -d)
  db="$dbs/$ADVISORY_DB_DIR"
  cp -r "$snapshot/." "$db"
  chmod -R u+w "$db"
  (
    cd "$db"
    export GIT_AUTHOR_DATE="${stamp}T00:00:00Z" GIT_COMMITTER_DATE="${stamp}T00:00:00Z"
    git init -q && git add -A &&
      git -c user.name=cpr -c user.email=cpr@localhost -c commit.gpgsign=false commit -qm "$(head -1 SNAPSHOT)" &&
      touch -d "${stamp}T00:00:00Z" .git/HEAD
  ) || status=$?
  if [ "$status" -eq 0 ]; then
    echo "advisories: $(head -1 "$snapshot/SNAPSHOT") ($(( ($(date +%s) - $(date -d "$stamp" +%s)) / 86400 )) days old)"
    CPR_ADVISORY_DBS=$dbs target/tools/bin/cargo-deny --offline --log-level error check || status=$?
  fi
  rm -rf "$dbs"
  return "$status"
}

#!/usr/bin/env bash
# Plays an audit session on small real images and prints it as Markdown (docs/audit-session.md
# is this script's output: `bash docs/audit-session.sh > docs/audit-session.md`).
# Needs qemu-img, sqlite3 and an installed snapledger.
set -euo pipefail
work=$(mktemp -d /tmp/snapledger-audit-XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
export SNAPLEDGER_STORE="sqlite:///$work/ledger.sqlite"
export SNAPLEDGER_ACTOR=alice COLUMNS=120

step() {  # print the command and its output (stdout and stderr) as one Markdown block
  echo
  echo '```console'
  local shown="\$" arg
  for arg in "$@"; do
    case "$arg" in
      *\'*) shown+=" \"$arg\"" ;;
      *[[:space:]\;\>\<\(\)]*) shown+=" '$arg'" ;;
      *) shown+=" $arg" ;;
    esac
  done
  echo "$shown" | sed "s|$work|/srv/vms|g"
  set +e
  "$@" 2>&1 | sed "s|$work|/srv/vms|g"
  local code=${PIPESTATUS[0]}
  set -e
  [ "$code" -eq 0 ] || echo "(exit $code)"
  echo '```'
}
say() { echo; echo "$*"; }

echo "# An audit session (generated)"
say "Made by \`bash docs/audit-session.sh\` on $(date -u +%Y-%m-%d) with snapledger $(python3 -c 'import importlib.metadata as m; print(m.version("snapledger"))'); paths shortened to /srv/vms. Every output below is real."
qemu-img create -q -f qcow2 base.qcow2 16M
say "Alice adopts a VM and takes two snapshots, giving reasons; Bob (another actor) reverts."
step snapledger adopt web --disk vda="$work/base.qcow2" --reason "CHG-1041 start tracking web"
step snapledger --reason "before the kernel upgrade" snapshot web pre-upgrade
qemu-io -c "write -P 0x5a 0 64k" "$work/base.pre-upgrade" >/dev/null
step snapledger --reason "after the kernel upgrade" snapshot web post-upgrade
step snapledger --actor bob --reason "INC-77 upgrade broke nginx" revert web pre-upgrade
say "The trail, filtered to the facts that matter to an auditor:"
step snapledger log web --type SnapshotTaken --type Reverted --type Adopted
say "The head of the hash chain is kept somewhere else (a ticket, a second host):"
step snapledger verify --head
snapledger export --format jsonl > history.jsonl  # taken now, replayed at the end
head=$(snapledger verify --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["head"]["hash"])')
say "Someone edits the stored event that names the reverted-to snapshot, straight in SQLite:"
pos=$(snapledger log --json --type Reverted | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["position"])')
step sqlite3 ledger.sqlite "UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT), 'pre-upgrade', 'post-upgrade') AS BLOB) WHERE rowid = $pos"
step snapledger verify
say "Put back, the same check passes against the kept head; then the tail is cut:"
step sqlite3 ledger.sqlite "UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT), 'post-upgrade', 'pre-upgrade') AS BLOB) WHERE rowid = $pos"
step snapledger verify --expect-head "$head"
last=$(snapledger verify --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["head"]["position"])')
step sqlite3 ledger.sqlite "DELETE FROM stored_events WHERE rowid > $((last - 2)); DELETE FROM snapledger_chain WHERE position > $((last - 2))"
step snapledger verify --expect-head "$head"
say "The history goes elsewhere as JSON lines, and is inspected there in a throwaway store:"
step sh -c "head -c 300 history.jsonl; echo ..."
step snapledger replay history.jsonl tree web
step snapledger replay history.jsonl log web --type Reverted --json
step snapledger replay history.jsonl --until 13 tree web
step snapledger replay history.jsonl delete web pre-upgrade --dry-run

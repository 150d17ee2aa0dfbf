#!/usr/bin/env bash
# The demo: builds the tools and shows Ka'ana like working on this machine, 127.0.0.1 only,
# in a temporary folder that is removed at the end. Exit 0 only if every step did what it should.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --workspace --quiet
bin="$(pwd)/target/debug"

work="$(mktemp -d -t kaana-demo.XXXXXX)"
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "Node A is created (its identity, config and state directory)"
a=$("$bin/kaana-offer" --home "$work/a" init --listen 127.0.0.1:0)
echo "$a"
step "Node B is created"
b=$("$bin/kaana-offer" --home "$work/b" init --listen 127.0.0.1:0)
echo "$b"

node_a=$("$bin/kaana-offer" --home "$work/a" id | sed -E 's/.*"node":"([^"]+)".*/\1/')
node_b=$("$bin/kaana-offer" --home "$work/b" id | sed -E 's/.*"node":"([^"]+)".*/\1/')
[ "$node_a" != "$node_b" ] || { echo "demo: FAILED: both nodes have the same id" >&2; exit 1; }

step "A adds B to its address book"
"$bin/kaana-offer" --home "$work/a" peer add "$node_b@127.0.0.1:7448"

step "A's identity survives a lost disk: rebuilt from its recovery phrase"
phrase=$("$bin/kaana-offer" --home "$work/a" recovery-phrase | sed -E 's/.*"recovery_phrase":"([^"]+)".*/\1/')
rebuilt=$(printf '%s\n' "$phrase" | "$bin/kaana-offer" --home "$work/a-rebuilt" init --recover --listen 127.0.0.1:0)
echo "$rebuilt"
case "$rebuilt" in
  *"\"node\":\"$node_a\""*) ;;
  *) echo "demo: FAILED: the rebuilt node is not A" >&2; exit 1 ;;
esac

printf '\ndemo: PASSED: two nodes created (A %s, B %s), an address book entry, and A rebuilt from its recovery phrase.\n' "${node_a:0:8}" "${node_b:0:8}"

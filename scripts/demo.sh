#!/usr/bin/env bash
# Ka'ana like, the demo: the seed's story told with the real tools, on 127.0.0.1 only, in a
# temporary folder that is removed at the end.
#
# Three nodes (A, B, C), each with a LUKS volume of real files, start their servers. A offers
# storage, B and C accept. Volumes go out; challenges pass. A fails a challenge on purpose, as a
# node with a few unreadable extents would; B's next push re-sends them, A's audit finds B honest,
# and A is challenged again and is ok. Greedy C deletes A's data after A's deliberate failure and
# is caught, with evidence anyone can check. When C's grace runs out, kaana-prune frees the
# space. Last, A's volume comes back from B, is decrypted, and its files compared.
#
# With --dht the nodes find each other by id alone, on a local Mainline DHT of 20 nodes on
# 127.0.0.1 (`kaana-offer dht-nodes`): B adds A knowing only A's id, and finds A's offers on the
# boards announced there. Without it, no tool goes near a DHT.
#
# Exit 0 only if every step did what it should. Every process started is stopped on exit, on
# failure and on Ctrl-C. Set KAANA_BIN to a folder of built tools to skip the build.
set -euo pipefail
cd "$(dirname "$0")/.."
dht=false
case "${1:-}" in
  --dht) dht=true ;;
  "") ;;
  *) echo "usage: scripts/demo.sh [--dht]" >&2; exit 2 ;;
esac
export PATH="$PATH:/usr/sbin:/sbin"

if [ -z "${KAANA_BIN:-}" ]; then
  scripts/install-deps.sh
  echo "demo: building the tools (cargo build: the first build takes a few minutes on a small machine)" >&2
  cargo build --workspace
  KAANA_BIN="$(pwd)/target/debug"
fi
for tool in kaana-offer kaana-sync kaana-challenge kaana-prune jq mke2fs qemu-img debugfs; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$KAANA_BIN/$tool" ] || { echo "demo: $tool is missing (run scripts/install-deps.sh)" >&2; exit 2; }
done
export PATH="$KAANA_BIN:$PATH"
unset KAANA_HOME KAANA_NOW
# Nothing leaves the machine: no public DHT, no router asked for a port.
export KAANA_DHT_BOOTSTRAP=none KAANA_PORT_MAPPING=off

work="$(mktemp -d -t kaana-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date +%s)
PASS=secret-demo-passphrase
step() { printf '\n== %s\n' "$*"; }
# The nodes' ids (and homes) shown as A, B and C, once known.
label() {
  local args=()
  for n in A B C; do
    local id_var="${n}_id"
    [ -n "${!id_var:-}" ] && args+=(-e "s/${!id_var}/<$n>/g")
  done
  args+=(-e "s#$work/##g")
  sed "${args[@]}"
}
fail() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }
# Runs a tool, shows its JSON, and keeps it in $out; exits unless the exit code is one of $ok.
run() {
  local ok="$1"; shift
  printf '$ %s\n' "$*" | label
  set +e
  out=$("$@" 2>"$work/last.err")
  local code=$?
  set -e
  [ -n "$out" ] && printf '%s\n' "$out" | label
  case " $ok " in
    *" $code "*) ;;
    *) cat "$work/last.err" >&2; fail "$* exited $code" ;;
  esac
}
check() { jq -e "$2" <<<"$1" >/dev/null || fail "expected $2 in: $1"; }

volume() { # NAME: an ext4 file system of real files, encrypted with LUKS
  local name=$1 dir="$work/$1.files"
  mkdir -p "$dir"
  printf 'This is %s. The first byte of my data is b.\n' "$name" >"$dir/notes.txt"
  head -c 2000000 /dev/urandom >"$dir/photo.raw"
  seq 1 20000 >"$dir/numbers.txt"
  mke2fs -q -t ext4 -d "$dir" "$work/$name.ext4" 8M >/dev/null
  qemu-img convert -q -f raw -O luks --object "secret,id=s,data=$PASS" -o key-secret=s,iter-time=10 \
    "$work/$name.ext4" "$work/$name.luks"
  rm "$work/$name.ext4"
}

node() { # NAME: init, start the server, remember its id and address
  local name=$1 home="$work/$1"
  kaana-offer --home "$home" init --listen 127.0.0.1:0 --capacity 256MiB --audit-rate 0 \
    --dht-bootstrap "$KAANA_DHT_BOOTSTRAP" --volume "$work/$name.luks" >"$work/$name.init" 2>/dev/null
  kaana-sync --home "$home" serve >"$work/$name.serve" 2>"$work/$name.serve.log" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/$name.serve" ] && break; sleep 0.05; done
  jq -c . "$work/$name.serve" || fail "the server of $name did not start"
  eval "${name}_id=\$(jq -r .node \"\$work/\$name.serve\")"
  eval "${name}_addr=\$(jq -r .listen \"\$work/\$name.serve\")"
}

if $dht; then
  step "A local Mainline DHT: 20 DHT nodes on 127.0.0.1, standing in for the public one"
  kaana-offer dht-nodes --count 20 >"$work/dht.json" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 600); do [ -s "$work/dht.json" ] && break; sleep 0.05; done
  KAANA_DHT_BOOTSTRAP=$(jq -r '.bootstrap | join(",")' "$work/dht.json") || fail "the DHT nodes did not start"
  echo "bootstrap: ${KAANA_DHT_BOOTSTRAP%%,*},… (20 nodes)"
fi

step "Three nodes, each with a LUKS-encrypted volume of real files, start their servers"
for n in A B C; do volume "$n"; node "$n"; done
for n in A B C; do
  id_var="${n}_id" addr_var="${n}_addr"
  echo "$n is node ${!id_var} at ${!addr_var}, state in $n/ (shown below as <$n> and $n)"
done
A() { kaana-offer --home "$work/A" "$@"; }
day=86400
t0=$(date +%s)
at() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

step "A offers 64 MiB for 64 MiB, keeping a failing peer's data 7 days and 14 days of its history; it publishes to its board"
run 0 kaana-offer --home "$work/A" create --size 64MiB --grace 7d; offer_b=$(jq -r .id <<<"$out")
run 0 kaana-offer --home "$work/A" create --size 64MiB --grace 7d; offer_c=$(jq -r .id <<<"$out")
run 0 kaana-offer --home "$work/A" publish

if $dht; then
  step "Each server announced its node on the DHT; B knows only A's id, and finds A there"
  for n in A B C; do
    for _ in $(seq 200); do
      jq -e '.announced | length > 0' "$work/$n/reach.json" >/dev/null 2>&1 && break
      sleep 0.05
    done
  done
  run 0 kaana-offer --home "$work/B" peer add "$A_id"
  check "$out" ".addrs == [\"$A_addr\"]"
  step "B and C list the boards announced on the DHT and accept (each takes one offer)"
  run 0 kaana-offer --home "$work/B" list --dht
  grep -o 'the DHT gave.*' "$work/last.err" || true
  check "$(jq -s . <<<"$out")" "map(select(.id == \"$offer_b\")) | length == 1"
  run 0 kaana-offer --home "$work/B" accept "$offer_b"; ab=$(jq -r .id <<<"$out")
  check "$out" '.status == "active" and .role == "taker"'
  run 0 kaana-offer --home "$work/C" list --dht
  run 0 kaana-offer --home "$work/C" accept "$offer_c"; ac=$(jq -r .id <<<"$out")
else
  step "B lists A's board and accepts; so does C (each takes one offer)"
  run 0 kaana-offer --home "$work/B" list --board "$A_id@$A_addr"
  check "$(head -1 <<<"$out")" '.size == 67108864 and .grace_secs == 604800 and .history_secs == 1209600'
  run 0 kaana-offer --home "$work/B" accept "$offer_b"; ab=$(jq -r .id <<<"$out")
  check "$out" '.status == "active" and .role == "taker"'
  run 0 kaana-offer --home "$work/C" list --board "$A_id@$A_addr"
  run 0 kaana-offer --home "$work/C" accept "$offer_c"; ac=$(jq -r .id <<<"$out")
fi

step "Everyone pushes its volume (read raw, so already encrypted) to its peer"
for n in A B C; do
  run 0 kaana-sync --home "$work/$n" push --all
  check "$(head -1 <<<"$out")" '.generation == 1 and .bytes_sent == .bytes_total'
done

step "A challenges its peers: each proves it holds A's data (BLAKE3 proofs of random chunks)"
run 0 kaana-challenge --home "$work/A" --all
check "$out" 'select(.kind == "routine") | .result == "pass"'

step "A fails B's next challenge on purpose, as a node with a few unreadable extents would; B marks A failing (one failure: no alarm)"
run 0 kaana-challenge --home "$work/A" fail-next "$ab" --mode damaged
run 0 kaana-challenge --home "$work/B" "$ab"
check "$out" '.result == "fail" and .breach == false'
run 0 kaana-offer --home "$work/B" contracts
check "$out" '.their_standing.state == "failing"'

step "B's nightly push re-sends just the extents A showed missing"
run 0 kaana-sync --home "$work/B" push --all
check "$out" '.extents_sent >= 1 and .extents_sent <= 3'

step "A's next run: its audit finds B still holds A's data; A asks to be challenged again and is ok"
run 0 kaana-challenge --home "$work/A" "$ab"
check "$(sed -n 1p <<<"$out")" '.kind == "audit" and .result == "pass" and .breach == false'
check "$(sed -n 2p <<<"$out")" '.kind == "rechallenge" and .result == "pass"'
run 0 kaana-offer --home "$work/B" contracts
check "$out" '.their_standing.state == "ok"'

step "A fails C's challenge on purpose too; greedy C deletes A's data at once to free space"
run 0 kaana-challenge --home "$work/A" fail-next "$ac" --mode damaged
run 0 kaana-challenge --home "$work/C" "$ac"
rm -rf "$work/C/inbound/$ac/extents"
echo "(C removed $work/C/inbound/${ac:0:12}…/extents)"

step "A's next run challenges C as usual, an audit while C judges A failing: a breach, with signed evidence"
run 1 kaana-challenge --home "$work/A" "$ac"
check "$out" '.kind == "audit" and .result == "fail" and .breach == true'
evidence=$(jq -r .evidence <<<"$out")

step "Anyone can check the evidence, with nothing but the file"
run 0 kaana-challenge check-evidence "$evidence"
check "$out" '.valid == true and .failed_samples > 0'

step "A week later (cron ran kaana-challenge every few hours) C's grace at A has run out: kaana-prune deletes C's data"
for h in 168 176 184 192; do
  run "0 1" env KAANA_NOW="$(at $((t0 + h * 3600)))" kaana-challenge --home "$work/A" --all >/dev/null
done
run 0 env KAANA_NOW="$(at $((t0 + 8 * day + 7200)))" kaana-prune --home "$work/A" --dry-run
check "$out" '.action == "delete"'
run 0 env KAANA_NOW="$(at $((t0 + 8 * day + 7200)))" kaana-prune --home "$work/A"
[ ! -e "$work/A/inbound/$ac" ] || fail "C's data is still at A"
run "0 1" kaana-offer --home "$work/A" status   # 1: it wants one more replica now
check "$out" '.committed == 67108864 + 16777216'   # B's contract: its size and its history space

step "Ransomware overwrites A's volume: the push guard refuses to make it the newest copy"
cp "$work/A.luks" "$work/A.original.luks"
head -c "$(stat -c %s "$work/A.luks")" /dev/urandom >"$work/A.luks"
run 1 kaana-sync --home "$work/A" push "$ab"
check "$out" '.ok == false and (.error | contains("--force"))'
grep -o 'its LUKS header is gone[^.]*' "$work/last.err" || fail "the guard did not say why"

step "Even pushed by mistake with --force, the old volume stays in B's history"
run 0 kaana-sync --home "$work/A" push "$ab" --force
check "$out" '.generation == 2'
run 0 kaana-sync --home "$work/A" history "$ab"
check "$(jq -s . <<<"$out")" 'map(.generation) == [1, 2]'

step "A restores its volume as it was before the ransomware: byte for byte, and it decrypts"
rm "$work/A.luks"
run 0 kaana-sync --home "$work/A" restore "$ab" --out "$work/A.restored.luks" --generation 1
check "$out" '.ok == true and .generation == 1'
cmp "$work/A.original.luks" "$work/A.restored.luks" || fail "the restored volume differs"
qemu-img convert --object "secret,id=s,data=$PASS" \
  --image-opts "driver=luks,key-secret=s,file.filename=$work/A.restored.luks" -O raw "$work/A.restored.ext4"
for f in notes.txt photo.raw numbers.txt; do
  debugfs -R "cat /$f" "$work/A.restored.ext4" 2>/dev/null | cmp - "$work/A.files/$f" || fail "$f differs"
done
echo "notes.txt, photo.raw and numbers.txt are identical to the originals"

$dht && found=" (the nodes found each other by id on a local DHT)" || found=""
printf '\ndemo: PASSED%s in %ss: offers, contracts, encrypted pushes, challenges, an honest audit, a caught breach, a prune after the grace, a ransomwared volume refused, and a full restore from history.\n' \
  "$found" "$(($(date +%s) - started))"

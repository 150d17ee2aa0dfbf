#!/usr/bin/env bash
# Benchmark: Ka'ana like against rsync (over ssh, and rsync's own daemon) doing the same job on
# the same machine in the same run, and against the machine's own limits.
#
#   scripts/bench.sh [SIZE]      SIZE of the random volume, default 1GiB (units: MiB, GiB)
#
# Besides rsync: what a push's own work comes to at that moment (its computing alone, QUIC alone
# carrying SIZE, and the two on the cores: kaana-proto/examples/push_work.rs), a bare b3sum of
# the volume (the floor of any change detection that reads it), peak memory at 1, 4 and 16 x
# SIZE (and at SIZE in 64 KiB extents: as many extents as a volume 64 times larger; and with 15
# generations of history, SIZE / 16 and SIZE / 4 in 4 KiB extents), four owners pushing into
# one holder at once, forty owners' challenges at once, --limit-rate over a 30-second push and
# restore, and what a push and a restore ask of this one disk (dd writing SIZE, and for the
# restore reading SIZE at the same time, as deep as each).
# Needs about 40 x SIZE of free disk.
#
# Everything runs on 127.0.0.1 (sshd and the rsync daemon too) in a temporary folder under
# /var/tmp, removed at the end. Each timed figure is the median of RUNS runs (default 5),
# alternating the contenders, each run starting with nothing of the last one left to write back
# (a sync, untimed). Prints a table for people, then one JSON line with every figure
# and every ratio (ours / rsync over ssh). Needs root for sshd (it installs rsync, openssh-server
# and iperf3 if they are missing).
set -Eeuo pipefail
# A step that fails says which, even when its own output is hidden.
trap 'printf "bench: FAILED at line %s: %s (exit %s)\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
# Decimal points, whatever the caller's locale: printf and bc read and write these figures.
export LC_ALL=C

SIZE=${1:-1GiB}
RUNS=${RUNS:-5}
CHALLENGES=${CHALLENGES:-100}

need=()
for c in rsync:rsync sshd:openssh-server ssh:openssh-client iperf3:iperf3 jq:jq; do
  command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:$HOME/.cargo/bin"
if ! command -v b3sum >/dev/null 2>&1; then
  echo "bench: installing b3sum (cargo install)" >&2
  cargo install b3sum --quiet
fi
echo "bench: building (release)" >&2
cargo build --release --workspace --quiet
cargo build --release -p kaana-proto --example push_work --quiet
BIN="$(pwd)/target/release"
export PATH="$BIN:$PATH"
unset KAANA_HOME KAANA_NOW
# Nothing leaves the machine: no public DHT, no router asked for a port.
export KAANA_DHT_BOOTSTRAP=none KAANA_PORT_MAPPING=off

bytes_of() { numfmt --from=iec-i "${1%B}"; }
size=$(bytes_of "$SIZE")
mib=$((size >> 20))

work=$(mktemp -d /var/tmp/kaana-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf 'bench: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { printf '%.3f' "$(echo "scale=6; $1 / $2" | bc -l)"; }
# Before each timed run: what the last one left in the page cache is written back now, untimed,
# so that no contender's run pays for another's writes (rsync leaves the volume's worth).
settle() { sync; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the contenders' set-up -------------------------------------------------------------------
say "making a random volume of $SIZE"
head -c "$size" /dev/urandom >"$work/vol.img"

start_node() { # NAME [init args...]
  local name=$1; shift
  kaana-offer --home "$work/$name" init --listen 127.0.0.1:0 --audit-rate 0 "$@" >/dev/null 2>"$work/$name.init" \
    || { say "FAILED: kaana-offer init of $name: $(cat "$work/$name.init")"; exit 1; }
  # No cap on challenges an hour: CHALLENGES may ask more than a day's worth of one contract.
  kaana-sync --home "$work/$name" serve --challenges-per-hour 0 >"$work/$name.serve" 2>"$work/$name.log" &
  pids+=($!)
  eval "${name}_pid=$!"
  for _ in $(seq 100); do [ -s "$work/$name.serve" ] && break; sleep 0.05; done
  eval "${name}_peer=\$(jq -r '\"\\(.node)@\\(.listen)\"' \"\$work/\$name.serve\")"
}
restart_server() { # NAME: a fresh server process (its peak memory starts from zero)
  local name=$1 pidvar="${1}_pid"
  kill "${!pidvar}"; wait "${!pidvar}" 2>/dev/null || true
  local addr; addr=$(jq -r .listen "$work/$name.serve")
  kaana-sync --home "$work/$name" serve --listen "$addr" --challenges-per-hour 0 >"$work/$name.serve" 2>>"$work/$name.log" &
  pids+=($!)
  eval "${name}_pid=$!"
  for _ in $(seq 100); do [ -s "$work/$name.serve" ] && break; sleep 0.05; done
}
contract() { # OFFERER TAKER SIZE [create options...]: prints the contract id
  local offer offerer=$1 taker=$2 csize=$3
  shift 3
  offer=$(kaana-offer --home "$work/$offerer" create --size "$csize" "$@" | jq -r .id)
  kaana-offer --home "$work/$offerer" publish "$offer" >/dev/null
  local peer="${offerer}_peer"
  kaana-offer --home "$work/$taker" list --board "${!peer}" >/dev/null
  kaana-offer --home "$work/$taker" accept "$offer" | jq -r .id | grep . || { say "FAILED: no contract"; kill -TERM $$; }
}

cap=$(((size * 6) >> 20))MiB
start_node B --capacity "$(((size * 24) >> 20))MiB"   # 1, 4 and 16 x SIZE at once, and more
start_node A --capacity "$cap" --volume "$work/vol.img"
# History: 14 days in 50% of the size (at small sizes, 20 scattered 1 MiB writes touch more than
# the default 25%, and the push guard would want --force).
ab=$(contract B A "${mib}MiB" --history-space 50%)
fresh_holder() { rm -rf "$work/B/inbound/$ab" "$work/A/outbound/$ab"; }

ssh_port=$(free_port)
mkdir -p "$work/ssh" "$work/ssh-dest" "$work/rsyncd" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host" && ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/id"
cp "$work/ssh/id.pub" "$work/ssh/authorized_keys"
cat >"$work/ssh/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $work/ssh/host
AuthorizedKeysFile $work/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
PidFile $work/ssh/sshd.pid
EOF
/usr/sbin/sshd -f "$work/ssh/sshd_config" -D -e 2>"$work/ssh/sshd.log" &
pids+=($!)
SSH="ssh -p $ssh_port -i $work/ssh/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
rsync_port=$(free_port)
cat >"$work/rsyncd.conf" <<EOF
[bench]
path = $work/rsyncd
use chroot = no
read only = no
uid = root
gid = root
EOF
rsync --daemon --no-detach --config="$work/rsyncd.conf" --port "$rsync_port" --address 127.0.0.1 &
pids+=($!)
sleep 0.5
for _ in $(seq 50); do $SSH root@127.0.0.1 true 2>/dev/null && break; sleep 0.1; done

# disk_floor DEPTH [read]: SIZE of random bytes written straight to the device and synced, DEPTH
# blocks of 4 MiB at once, and with "read", SIZE read straight from the device at the same time
# and as deep.
disk_floor() {
  local depth=$1 reads=${2:-} block=4194304 per dds=() t q p
  per=$(((size + block * depth - 1) / (block * depth))) # blocks a slice, the last block whole or not
  cat "$work/vol.img" >/dev/null # what the writers copy comes from memory
  rm -f "$work/floor.img"; settle; t=$(now)
  for q in $(seq 0 $((depth - 1))); do
    if [ -n "$reads" ]; then
      dd if="$work/vol.img" of=/dev/null bs=$block skip=$((q * per)) count=$per iflag=direct status=none &
      dds+=($!); pids+=($!)
    fi
    dd if="$work/vol.img" of="$work/floor.img" bs=$block skip=$((q * per)) seek=$((q * per)) count=$per \
      oflag=direct conv=notrunc,fsync status=none &
    dds+=($!); pids+=($!)
  done
  for p in "${dds[@]}"; do wait "$p" || { say "FAILED: a dd of the disk floor"; exit 1; }; done
  since "$t"
  pids=("${pids[@]:0:${#pids[@]}-${#dds[@]}}") # (cleanup kills them only while they run)
  rm -f "$work/floor.img"
}

# --- initial push --------------------------------------------------------------------------------
say "initial push, $RUNS runs each (fresh destination every run)"
ours_push() { fresh_holder; settle; local t; t=$(now); kaana-sync --home "$work/A" push "$ab" >/dev/null; since "$t"; }
ssh_push() { rm -f "$work/ssh-dest/vol.img"; settle; local t; t=$(now); rsync --inplace -e "$SSH" "$work/vol.img" "root@127.0.0.1:$work/ssh-dest/vol.img"; since "$t"; }
daemon_push() { rm -f "$work/rsyncd/vol.img"; settle; local t; t=$(now); rsync --inplace "$@" "$work/vol.img" "rsync://127.0.0.1:$rsync_port/bench/vol.img"; since "$t"; }
# Our holder syncs every extent to disk before it says "stored"; rsync does not unless asked, so
# the daemon also runs with --fsync, for a like-for-like figure: the target is against that one.
# Beside them, in each run, what a push's own work comes to on this machine at that moment
# (kaana-proto/examples/push_work.rs): its computing alone (marks, keystream and hash on the
# owner, QUIC's sealing and opening, the holder's check) spread over the cores; QUIC alone, with
# this project's settings, carrying SIZE to another process that drops it; and the least a push
# could take doing that work and nothing else, its cores kept busy; and what the push asks of the
# disk alone: SIZE written straight to the device and synced, as deep as the holder writes one
# owner's extents (PUSH_DEPTH of 4 MiB at once).
PUSH_DEPTH=4
: >"$work/t.ours" >"$work/t.ssh" >"$work/t.daemon" >"$work/t.dsync" >"$work/t.work" >"$work/t.floor"
for r in $(seq "$RUNS"); do
  settle; "$BIN/examples/push_work" "$size" "$(nproc)" >>"$work/t.work"
  case $((r % 3)) in
    1) ours_push >>"$work/t.ours"; ssh_push >>"$work/t.ssh"; daemon_push >>"$work/t.daemon"; daemon_push --fsync >>"$work/t.dsync"
       disk_floor "$PUSH_DEPTH" >>"$work/t.floor" ;;
    2) ssh_push >>"$work/t.ssh"; daemon_push >>"$work/t.daemon"; daemon_push --fsync >>"$work/t.dsync"
       disk_floor "$PUSH_DEPTH" >>"$work/t.floor"; ours_push >>"$work/t.ours" ;;
    0) disk_floor "$PUSH_DEPTH" >>"$work/t.floor"; daemon_push >>"$work/t.daemon"; daemon_push --fsync >>"$work/t.dsync"
       ours_push >>"$work/t.ours"; ssh_push >>"$work/t.ssh" ;;
  esac
done
push_disk=$(median <"$work/t.floor")
push_ours=$(median <"$work/t.ours"); push_ssh=$(median <"$work/t.ssh"); push_daemon=$(median <"$work/t.daemon")
push_dsync=$(median <"$work/t.dsync")
push_compute=$(jq .computing_s "$work/t.work" | median); push_quic=$(jq .transport_s "$work/t.work" | median)
push_quic_cpu=$(jq .transport_cpu_s "$work/t.work" | median); push_floor=$(jq .least_s "$work/t.work" | median)

# --- incremental push ------------------------------------------------------------------------------
say "incremental push after 20 random 1 MiB writes, $RUNS runs each"
scribble() { for _ in $(seq 20); do dd if=/dev/urandom of="$work/vol.img" bs=1M count=1 seek=$((RANDOM * 32768 % mib + RANDOM % mib)) conv=notrunc status=none 2>/dev/null || true; done; }
: >"$work/i.ours" >"$work/i.ssh" >"$work/i.sent"
for r in $(seq "$RUNS"); do
  scribble
  settle; t=$(now); line=$(kaana-sync --home "$work/A" push "$ab"); since "$t" >>"$work/i.ours"
  jq -r .bytes_sent <<<"$line" >>"$work/i.sent"
  settle; t=$(now); rsync -I --inplace --no-whole-file -e "$SSH" "$work/vol.img" "root@127.0.0.1:$work/ssh-dest/vol.img"; since "$t" >>"$work/i.ssh"
done
incr_ours=$(median <"$work/i.ours"); incr_ssh=$(median <"$work/i.ssh"); incr_sent=$(median <"$work/i.sent")
say "b3sum of the volume from the page cache, $RUNS runs"
b3sum "$work/vol.img" >/dev/null
: >"$work/b3.t"
for r in $(seq "$RUNS"); do t=$(now); b3sum "$work/vol.img" >/dev/null; since "$t" >>"$work/b3.t"; done
b3=$(median <"$work/b3.t")

# --- restore -------------------------------------------------------------------------------------
say "full restore, $RUNS runs each, and what it asks of the disk alone"
# rsync's pull neither reads its source from the disk (it is in the page cache) nor syncs what it
# writes; ours reads extents the holder wrote straight to the device and syncs the volume it
# writes. Beside them in each run: rsync over ssh with --fsync, and what the restore asks of this
# one disk, dd reading SIZE straight from the device while SIZE of random bytes is written straight
# back and synced, at the restore's depth (RESTORE_DEPTH extents of 4 MiB in flight: as many reads
# and as many writes at once).
RESTORE_DEPTH=4
ours_restore() { rm -f "$work/restored.img"; settle; local t; t=$(now); kaana-sync --home "$work/A" restore "$ab" --out "$work/restored.img" >/dev/null; since "$t"; }
ssh_restore() { rm -f "$work/pulled.img"; settle; local t; t=$(now); rsync "$@" -e "$SSH" "root@127.0.0.1:$work/ssh-dest/vol.img" "$work/pulled.img"; since "$t"; }
: >"$work/r.ours" >"$work/r.ssh" >"$work/r.sshf" >"$work/r.floor"
for r in $(seq "$RUNS"); do
  case $((r % 3)) in
    1) ours_restore >>"$work/r.ours"; ssh_restore >>"$work/r.ssh"; ssh_restore --fsync >>"$work/r.sshf"; disk_floor "$RESTORE_DEPTH" read >>"$work/r.floor" ;;
    2) ssh_restore >>"$work/r.ssh"; ssh_restore --fsync >>"$work/r.sshf"; disk_floor "$RESTORE_DEPTH" read >>"$work/r.floor"; ours_restore >>"$work/r.ours" ;;
    0) disk_floor "$RESTORE_DEPTH" read >>"$work/r.floor"; ours_restore >>"$work/r.ours"; ssh_restore >>"$work/r.ssh"; ssh_restore --fsync >>"$work/r.sshf" ;;
  esac
done
cmp -s "$work/restored.img" "$work/vol.img" || { say "FAILED: the restored volume differs"; exit 1; }
restore_sshf=$(median <"$work/r.sshf"); restore_floor=$(median <"$work/r.floor")
restore_ours=$(median <"$work/r.ours"); restore_ssh=$(median <"$work/r.ssh")
rm -f "$work/restored.img" "$work/pulled.img" "$work/ssh-dest/vol.img" "$work/rsyncd/vol.img"

# --- challenges ----------------------------------------------------------------------------------
say "challenge round trips, $CHALLENGES runs"
: >"$work/c.ms" >"$work/c.wire"
for _ in $(seq "$CHALLENGES"); do
  line=$(kaana-challenge --home "$work/A" "$ab")
  jq -r .ms <<<"$line" >>"$work/c.ms"; jq -r .wire_bytes <<<"$line" >>"$work/c.wire"
done
rtt_ms=$(median <"$work/c.ms"); wire=$(median <"$work/c.wire")
read_bytes=$(grep '"event":"answer"' "$work/B/events.jsonl" | tail -n "$CHALLENGES" | jq -r .read_bytes | median)

say "kaana-challenge --all over 50 contracts"
head -c $((8 << 20)) /dev/urandom >"$work/small.img"
start_node Y --capacity 1GiB
start_node X --capacity 1GiB --volume "$work/small.img"
for _ in $(seq 50); do contract Y X 8MiB >/dev/null; done
kaana-sync --home "$work/X" push --all >/dev/null
: >"$work/all.t"
for r in $(seq "$RUNS"); do
  t=$(now); kaana-challenge --home "$work/X" --all >"$work/all.out"; since "$t" >>"$work/all.t"
  [ "$(jq -s 'map(select(.result == "pass")) | length' "$work/all.out")" = 50 ] || { say "FAILED: not all 50 challenges passed"; exit 1; }
done
all50=$(median <"$work/all.t")

# --- under a flood -------------------------------------------------------------------------------
say "honest work alone and under a flood (strangers on fresh keys, a hostile contract peer), $RUNS runs each"
cargo build --release --example flood --quiet
head -c $((64 << 20)) /dev/urandom >"$work/hostile.img"
start_node H --capacity 1GiB --volume "$work/hostile.img"
hb=$(contract B H 64MiB)
kaana-sync --home "$work/H" push "$hb" >/dev/null
honest_round() { # TAG: an incremental push, a full restore and 10 challenges by A, timed
  scribble
  local t; t=$(now); kaana-sync --home "$work/A" push "$ab" >/dev/null; since "$t" >>"$work/$1.push"
  rm -f "$work/restored.img"; t=$(now)
  kaana-sync --home "$work/A" restore "$ab" --out "$work/restored.img" >/dev/null; since "$t" >>"$work/$1.restore"
  for _ in $(seq 10); do kaana-challenge --home "$work/A" "$ab" | jq -r .ms >>"$work/$1.challenge"; done
}
: >"$work/u.push" >"$work/u.restore" >"$work/u.challenge" >"$work/f.push" >"$work/f.restore" >"$work/f.challenge"
restart_server B
for r in $(seq "$RUNS"); do honest_round u; done
alone_rss=$(awk '/VmHWM/ {print $2}' /proc/"$B_pid"/status)
restart_server B
target/release/examples/flood "$B_peer" --as "$work/H" "$hb" --secs 3600 >"$work/flood.out" 2>"$work/flood.log" &
flood_pid=$!
pids+=($flood_pid)
sleep 2
for r in $(seq "$RUNS"); do honest_round f; done
flood_rss=$(awk '/VmHWM/ {print $2}' /proc/"$B_pid"/status)
kill -INT "$flood_pid"; wait "$flood_pid" || true
flood_sent=$(cat "$work/flood.out")
kill -0 "$B_pid" || { say "FAILED: the server died under the flood"; exit 1; }
kaana-sync --home "$work/A" verify "$ab" >/dev/null || { say "FAILED: verify after the flood"; exit 1; }
u_push=$(median <"$work/u.push"); u_restore=$(median <"$work/u.restore"); u_ch=$(median <"$work/u.challenge")
f_push=$(median <"$work/f.push"); f_restore=$(median <"$work/f.restore"); f_ch=$(median <"$work/f.challenge")
rm -f "$work/restored.img"

# --- history -------------------------------------------------------------------------------------
say "history: an incremental push with and without history, $RUNS runs each"
cp "$work/vol.img" "$work/hist.img"
start_node D --capacity "$cap"
start_node E --capacity "$cap" --volume "$work/hist.img"
eh=$(contract D E "${mib}MiB" --history-space 50%)                 # 14 days in 50%, as A's
e0=$(contract D E "${mib}MiB" --history 0)                          # the newest only
kaana-sync --home "$work/E" push --all >/dev/null
: >"$work/h.with" >"$work/h.without"
timed_push() { local t; t=$(now); kaana-sync --home "$work/E" push "$1" >/dev/null; since "$t"; }
for r in $(seq "$RUNS"); do
  for _ in $(seq 20); do dd if=/dev/urandom of="$work/hist.img" bs=1M count=1 seek=$((RANDOM * 32768 % mib + RANDOM % mib)) conv=notrunc status=none; done
  if [ $((r % 2)) = 1 ]; then timed_push "$eh" >>"$work/h.with"; timed_push "$e0" >>"$work/h.without"
  else timed_push "$e0" >>"$work/h.without"; timed_push "$eh" >>"$work/h.with"; fi
done
hist_with=$(median <"$work/h.with"); hist_without=$(median <"$work/h.without")

say "history: 30 daily generations with 1% of the extents changed each day"
e30=$(contract D E "${mib}MiB" --history 30d --history-space 50%)
e14=$(contract D E "${mib}MiB")                                     # the default: 14 days, 25%
kaana-sync --home "$work/E" push "$e30" >/dev/null
kaana-sync --home "$work/E" push "$e14" >/dev/null
extents=$(((size + (4 << 20) - 1) / (4 << 20)))
daily=$(((extents + 99) / 100))
day0=$(date +%s)
for d in $(seq 30); do
  for _ in $(seq "$daily"); do dd if=/dev/urandom of="$work/hist.img" bs=4M count=1 seek=$(((RANDOM * 32768 + RANDOM) % extents)) conv=notrunc status=none; done
  at=$(date -u -d "@$((day0 + d * 86400))" +%Y-%m-%dT%H:%M:%SZ)
  kill "$D_pid"; wait "$D_pid" 2>/dev/null || true
  addr=$(jq -r .listen "$work/D.serve")
  KAANA_NOW=$at kaana-sync --home "$work/D" serve --listen "$addr" >"$work/D.serve" 2>>"$work/D.log" &
  pids+=($!); D_pid=$!
  for _ in $(seq 100); do [ -s "$work/D.serve" ] && break; sleep 0.05; done
  KAANA_NOW=$at kaana-sync --home "$work/E" push "$e14" >/dev/null
  KAANA_NOW=$at kaana-sync --home "$work/E" push "$e30" >/dev/null
done
kept() { kaana-sync --home "$work/E" history "$1" | wc -l; }
held() { du -sb "$work/D/inbound/$1" | cut -f1; }
days_g30=$(kept "$e30"); days_b30=$(held "$e30"); days_g14=$(kept "$e14"); days_b14=$(held "$e14")
oldest=$(kaana-sync --home "$work/E" history "$e30" | head -1 | jq .generation)
KAANA_NOW=$at kaana-sync --home "$work/E" verify "$e30" --generation "$oldest" >/dev/null \
  || { say "FAILED: the oldest kept generation does not verify"; exit 1; }
kill "$D_pid" "$E_pid"; wait "$D_pid" "$E_pid" 2>/dev/null || true
rm -rf "$work/D" "$work/E" "$work/hist.img"

# --- memory --------------------------------------------------------------------------------------
peak() { # VOLUME_NODE CONTRACT [push options]: sets peak_client, peak_server (KiB) of a push to a fresh holder
  local owner=$1 c=$2; shift 2
  rm -rf "$work/B/inbound/$c" "$work/$owner/outbound/$c"
  restart_server B
  /usr/bin/time -o "$work/time.out" -f %M kaana-sync --home "$work/$owner" push "$c" "$@" >/dev/null
  peak_client=$(tail -1 "$work/time.out")
  peak_server=$(awk '/VmHWM/ {print $2}' /proc/"$B_pid"/status)
}
say "peak memory at $SIZE, 4 x and 16 x $SIZE, and at $SIZE / 4 and $SIZE in 64 KiB extents"
peak A "$ab"; mem_client=$peak_client; mem_server=$peak_server
# What each extent costs, apart from the buffers: the same extent size (64 KiB), 4 times as many
# extents. Buffers are the same in both; the difference is the per-extent state.
peak A "$ab" --extent-size 64KiB; memx_client=$peak_client; memx_server=$peak_server
rm -rf "$work/B/inbound/$ab" "$work/A/outbound/$ab"
head -c $((size / 4)) "$work/vol.img" >"$work/volq.img"
start_node AQ --capacity "$cap" --volume "$work/volq.img"
bq=$(contract B AQ "$((mib / 4))MiB" --history 0)
peak AQ "$bq" --extent-size 64KiB; memq_client=$peak_client; memq_server=$peak_server
rm -f "$work/volq.img"; rm -rf "$work/B/inbound/$bq"
per_extent() { echo "scale=0; ($2 - $1) * 1024 / ($size / 65536 * 3 / 4)" | bc -l; }
pex_client=$(per_extent "$memq_client" "$memx_client"); pex_server=$(per_extent "$memq_server" "$memx_server")
for k in 4 16; do
  for _ in $(seq "$k"); do cat "$work/vol.img"; done >"$work/vol$k.img"   # (the keystream makes every extent differ)
  start_node "A$k" --capacity "$(((size * k * 2) >> 20))MiB" --volume "$work/vol$k.img"
  bk=$(contract B "A$k" "$((mib * k))MiB" --history 0)
  peak "A$k" "$bk"; eval "mem${k}_client=$peak_client mem${k}_server=$peak_server"
  rm -f "$work/vol$k.img"; rm -rf "$work/B/inbound/$bk"
done
# With history: the default terms, 15 generations kept, then an incremental push to a freshly
# started holder. In 4 KiB extents, SIZE / 16 and SIZE / 4 (the larger has as many extents as a
# volume 1024 times larger): what each extent costs stands well out of the noise of peak memory.
hist_peak() { # MIB: sets hp_client, hp_server (KiB), hp_kept, hp_extents
  local m=$1 node="AH$1" c n
  head -c $((m << 20)) "$work/vol.img" >"$work/volh$m.img"
  start_node "$node" --capacity "$cap" --volume "$work/volh$m.img"
  c=$(contract B "$node" "${m}MiB")
  n=$(((m << 20) / 4096))
  scrawl() { for _ in 1 2 3 4; do dd if=/dev/urandom of="$work/volh$m.img" bs=4096 count=2 seek=$(((RANDOM * 32768 + RANDOM) % (n - 1))) conv=notrunc status=none; done; }
  kaana-sync --home "$work/$node" push "$c" --extent-size 4KiB >/dev/null
  for _ in $(seq 14); do scrawl; kaana-sync --home "$work/$node" push "$c" --extent-size 4KiB >/dev/null; done
  scrawl
  restart_server B
  /usr/bin/time -o "$work/time.out" -f %M kaana-sync --home "$work/$node" push "$c" --extent-size 4KiB >/dev/null
  hp_client=$(tail -1 "$work/time.out")
  hp_server=$(awk '/VmHWM/ {print $2}' /proc/"$B_pid"/status)
  hp_kept=$(kaana-sync --home "$work/$node" history "$c" | jq -s length)
  hp_extents=$n
  local pidvar="${node}_pid"
  kill "${!pidvar}"; wait "${!pidvar}" 2>/dev/null || true
  rm -f "$work/volh$m.img"; rm -rf "$work/B/inbound/$c" "$work/$node"
}
say "peak memory with history: $((mib / 16)) MiB and $((mib / 4)) MiB in 4 KiB extents, 15 generations"
hist_peak $((mib / 16)); hs_client=$hp_client hs_server=$hp_server hs_n=$hp_extents
hist_peak $((mib / 4)); hb_client=$hp_client hb_server=$hp_server hb_n=$hp_extents hist_kept=$hp_kept
phx_client=$(echo "scale=0; ($hb_client - $hs_client) * 1024 / ($hb_n - $hs_n)" | bc -l)
phx_server=$(echo "scale=0; ($hb_server - $hs_server) * 1024 / ($hb_n - $hs_n)" | bc -l)
# The slope from SIZE to 16 x SIZE, in KiB per GiB of volume, and what it makes of a terabyte.
slope() { echo "scale=3; ($2 - $1) * 1073741824 / ($size * 15)" | bc -l; }
slope_client=$(slope "$mem_client" "$mem16_client"); slope_server=$(slope "$mem_server" "$mem16_server")
tib() { echo "scale=0; ($1 + $2 * (1024 - $size / 1073741824)) / 1" | bc -l; }
tib_client=$(tib "$mem_client" "$slope_client"); tib_server=$(tib "$mem_server" "$slope_server")
# And by the per-extent cost: a TiB in 4 MiB extents has 262144 of them.
tibx() { echo "scale=0; $1 + $2 * (262144 - $size / 4194304) / 1024" | bc -l; }
tibx_client=$(tibx "$mem_client" "$pex_client"); tibx_server=$(tibx "$mem_server" "$pex_server")
tibh_client=$(tibx "$mem_client" "$phx_client"); tibh_server=$(tibx "$mem_server" "$phx_server")

# --- a busy holder -------------------------------------------------------------------------------
say "a busy holder: one owner's push of $SIZE alone, and four owners' at once, $RUNS runs each"
start_node K --capacity "$(((size * 12) >> 20))MiB"
ko=()
for o in 1 2 3 4; do
  # (owners run no server here: only their tools talk, to the holder; a fixed port gives them an address)
  kaana-offer --home "$work/O$o" init --listen "127.0.0.1:$(free_port)" --audit-rate 0 --capacity "$cap" --volume "$work/vol.img" >/dev/null 2>&1
  ko+=("$(contract K "O$o" "${mib}MiB" --history 0)")
done
fresh_k() { for o in 1 2 3 4; do rm -rf "$work/K/inbound/${ko[o-1]}" "$work/O$o/outbound/${ko[o-1]}"; done; }
: >"$work/k.alone" >"$work/k.wall" >"$work/k.spread"
busy_rss=0
for r in $(seq "$RUNS"); do
  fresh_k
  t=$(now); kaana-sync --home "$work/O1" push "${ko[0]}" >/dev/null; since "$t" >>"$work/k.alone"
  fresh_k; restart_server K
  t=$(now)
  ps=()
  for o in 1 2 3 4; do kaana-sync --home "$work/O$o" push "${ko[o-1]}" >"$work/k.$o" & ps+=($!); done
  wait "${ps[@]}"
  since "$t" >>"$work/k.wall"
  cat "$work/k.1" "$work/k.2" "$work/k.3" "$work/k.4" | jq -s 'map(.secs) | max / min' >>"$work/k.spread"
  rss=$(awk '/VmHWM/ {print $2}' /proc/"$K_pid"/status); [ "$rss" -gt "$busy_rss" ] && busy_rss=$rss
done
busy_alone=$(median <"$work/k.alone"); busy_wall=$(median <"$work/k.wall"); busy_spread=$(median <"$work/k.spread")
busy_ratio=$(echo "scale=3; 4 * $busy_alone / $busy_wall" | bc -l)
fresh_k

say "forty owners' challenges at once, against the same holder"
for o in $(seq 40); do
  kaana-offer --home "$work/W$o" init --listen "127.0.0.1:$(free_port)" --audit-rate 0 --capacity 64MiB --volume "$work/small.img" >/dev/null 2>&1
  wc_=$(contract K "W$o" 8MiB --history 0)
  kaana-sync --home "$work/W$o" push "$wc_" >/dev/null
done
t=$(now)
ps=()
for o in $(seq 40); do kaana-challenge --home "$work/W$o" --all >"$work/w.$o" 2>"$work/w.$o.err" & ps+=($!); done
wait "${ps[@]}" || true
forty_s=$(since "$t")
forty_pass=$(cat "$work"/w.* | jq -s 'map(select(.result == "pass")) | length')
forty_ms=$(cat "$work"/w.* | jq -r 'select(.result == "pass") | .ms' | median)
[ "$forty_pass" = 40 ] || say "FAILED: $forty_pass of 40 challenges at once passed"

# --- a rate limit --------------------------------------------------------------------------------
rate=$((size / 30))
say "--limit-rate $rate (bytes a second: $SIZE in 30 s), a push and a restore"
fresh_holder
line=$(kaana-sync --home "$work/A" push "$ab" --limit-rate "$rate")
lim_push=$(jq '.bytes_sent / .secs' <<<"$line")
rm -f "$work/restored.img"
line=$(kaana-sync --home "$work/A" restore "$ab" --out "$work/restored.img" --limit-rate "$rate")
lim_restore=$(jq '.bytes / .secs' <<<"$line")
rm -f "$work/restored.img"
off() { echo "scale=4; ($1 / $rate - 1) * 100" | bc -l; }
lim_push_off=$(off "$lim_push"); lim_restore_off=$(off "$lim_restore")

# --- the machine's limits ------------------------------------------------------------------------
say "the machine's own limits: loopback TCP, disk read"
iperf_port=$(free_port)
iperf3 -s -B 127.0.0.1 -p "$iperf_port" -1 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
tcp_gbit=$(iperf3 -c 127.0.0.1 -p "$iperf_port" -t 3 -J | jq '.end.sum_received.bits_per_second / 1e9')
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null && cache="cold" || cache="page cache"
t=$(now); dd if="$work/vol.img" of=/dev/null bs=4M status=none; disk_mbs=$(echo "$size / $(since "$t") / 1000000" | bc -l)

# --- report --------------------------------------------------------------------------------------
mbs() { echo "$size / $1 / 1000000" | bc -l; }
met() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "met"; else echo "NOT met"; fi; }
r_ssh=$(ratio "$push_ours" "$push_ssh"); r_dsync=$(ratio "$push_ours" "$push_dsync")
r_incr=$(ratio "$incr_ours" "$incr_ssh"); r_b3=$(ratio "$incr_ours" "$b3"); r_restore=$(ratio "$restore_ours" "$restore_ssh")
printf '\nKa'"'"'ana like vs rsync, %s random volume, median of %s runs (127.0.0.1, %s cores)\n\n' "$SIZE" "$RUNS" "$(nproc)"
printf '%-34s %10s %10s %10s %9s   %s\n' "" "ours" "rsync+ssh" "rsyncd" "ours/ssh" "target"
printf '%-34s %9.2fs %9.2fs %9.2fs %9.3f   <= 0.35: %s\n' "initial push" "$push_ours" "$push_ssh" "$push_daemon" "$r_ssh" "$(met "$r_ssh <= 0.35")"
printf '%-34s %10s %10s %9.2fs %9s   ours/this <= 0.6: %.3f, %s\n' "  (rsync daemon with --fsync)" "" "" "$push_dsync" "" "$r_dsync" "$(met "$r_dsync <= 0.6")"
printf '%-34s %9.2fs %10s %10s %9.3f\n' "  (its computing alone, $(nproc) cores)" "$push_compute" "" "" "$(ratio "$push_compute" "$push_ssh")"
printf '%-34s %9.2fs %10s %10s %9.3f   (%.2f s of CPU, both ends)\n' "  (QUIC alone carrying $SIZE)" "$push_quic" "" "" "$(ratio "$push_quic" "$push_ssh")" "$push_quic_cpu"
printf '%-34s %9.2fs %10s %10s %9.3f   ours/this: %.3f; this/the daemon with --fsync: %.3f\n' "  (the least a push could take)" "$push_floor" "" "" "$(ratio "$push_floor" "$push_ssh")" "$(ratio "$push_ours" "$push_floor")" "$(ratio "$push_floor" "$push_dsync")"
printf '%-34s %9.2fs %10s %10s %9.3f   ours/this: %.3f; this/the daemon with --fsync: %.3f\n' "  (push's disk floor, dd)" "$push_disk" "" "" "$(ratio "$push_disk" "$push_ssh")" "$(ratio "$push_ours" "$push_disk")" "$(ratio "$push_disk" "$push_dsync")"
printf '%-34s %9.2fs %9.2fs %10s %9.3f   <= 0.15: %s\n' "incremental push (20 x 1 MiB)" "$incr_ours" "$incr_ssh" "-" "$r_incr" "$(met "$r_incr <= 0.15")"
printf '%-34s %9.2fs %10s %10s %9s   ours/b3sum <= 1.5: %.3f, %s\n' "  (b3sum of the volume, page cache)" "$b3" "" "" "" "$r_b3" "$(met "$r_b3 <= 1.5")"
printf '%-34s %9.2fs %9.2fs %10s %9.3f   <= 0.3: %s\n' "full restore" "$restore_ours" "$restore_ssh" "-" "$r_restore" "$(met "$r_restore <= 0.3")"
printf '%-34s %10s %9.2fs %10s %9.3f   (rsync syncing what it writes)\n' "  (rsync over ssh with --fsync)" "" "$restore_sshf" "" "$(ratio "$restore_ours" "$restore_sshf")"
printf '%-34s %9.2fs %10s %10s %9.3f   (the disk alone: %s read and written at once, %s deep)\n' "  (restore's disk floor, dd)" "$restore_floor" "" "" "$(ratio "$restore_floor" "$restore_ssh")" "$SIZE" "$RESTORE_DEPTH"
printf '\n%-34s %.0f MB/s push, %.0f MB/s restore\n' "our throughput" "$(mbs "$push_ours")" "$(mbs "$restore_ours")"
printf '%-34s %s bytes sent\n' "incremental push sent" "$incr_sent"
printf '%-34s %.1f ms, %s bytes on the wire, %s bytes read by the holder\n' "challenge (median of $CHALLENGES)" "$rtt_ms" "$wire" "$read_bytes"
printf '%-34s %.2f s\n' "kaana-challenge --all, 50 contracts" "$all50"
printf '%-34s %.1f Gbit/s TCP, %.0f MB/s disk read (%s)\n' "the machine" "$tcp_gbit" "$disk_mbs" "$cache"
printf '\npeak memory of a push (target: < 64 MiB, flat)  client       server\n'
printf '%-34s %9s KiB %9s KiB\n' "  at $SIZE" "$mem_client" "$mem_server"
printf '%-34s %9s KiB %9s KiB\n' "  at 4 x $SIZE" "$mem4_client" "$mem4_server"
printf '%-34s %9s KiB %9s KiB   all < 65536: %s\n' "  at 16 x $SIZE" "$mem16_client" "$mem16_server" "$(met "$mem_client < 65536 && $mem_server < 65536 && $mem4_client < 65536 && $mem4_server < 65536 && $mem16_client < 65536 && $mem16_server < 65536")"
printf '%-34s %9.1f KiB %9.1f KiB   (per GiB of volume)\n' "  slope, $SIZE to 16 x $SIZE" "$slope_client" "$slope_server"
printf '%-34s %9s KiB %9s KiB   at a TiB, by that slope\n' "  extrapolated" "$tib_client" "$tib_server"
printf '%-34s %9s KiB %9s KiB\n' "  $SIZE / 4 in 64 KiB extents" "$memq_client" "$memq_server"
printf '%-34s %9s KiB %9s KiB\n' "  $SIZE in 64 KiB extents" "$memx_client" "$memx_server"
printf '%-34s %9s B   %9s B     (the difference over the extents added)\n' "  per extent" "$pex_client" "$pex_server"
printf '%-34s %9s KiB %9s KiB   at a TiB (262144 extents), by that; <= %s KiB + 48 MiB: %s\n' "  extrapolated" "$tibx_client" "$tibx_server" "$mem_client/$mem_server" "$(met "$tibx_client - $mem_client <= 49152 && $tibx_server - $mem_server <= 49152")"
printf '%s\n' "  with history ($hist_kept generations kept, 4 KiB extents)"
printf '%-34s %9s KiB %9s KiB\n' "    $((mib / 16)) MiB in 4 KiB extents" "$hs_client" "$hs_server"
printf '%-34s %9s KiB %9s KiB\n' "    $((mib / 4)) MiB in 4 KiB extents" "$hb_client" "$hb_server"
printf '%-34s %9s B   %9s B\n' "    per extent" "$phx_client" "$phx_server"
printf '%-34s %9s KiB %9s KiB   at a TiB, by that; <= %s KiB + 48 MiB: %s\n' "    extrapolated" "$tibh_client" "$tibh_server" "$mem_client/$mem_server" "$(met "$tibh_client - $mem_client <= 49152 && $tibh_server - $mem_server <= 49152")"
printf '\na busy holder: 4 owners push %s each at once\n' "$SIZE"
printf '%-34s %9.2fs alone, %.2fs for all four (%.0f MB/s together)\n' "  push" "$busy_alone" "$busy_wall" "$(echo "4 * $size / $busy_wall / 1000000" | bc -l)"
printf '%-34s %9.3f   >= 0.9: %s\n' "  together / one alone" "$busy_ratio" "$(met "$busy_ratio >= 0.9")"
printf '%-34s %9.3f   <= 1.5: %s\n' "  slowest / fastest owner" "$busy_spread" "$(met "$busy_spread <= 1.5")"
printf '%-34s %9s KiB   < 131072: %s\n' "  holder peak memory" "$busy_rss" "$(met "$busy_rss < 131072")"
printf '%-34s %9s of 40 passed in %.2f s (median %.1f ms)   all: %s\n' "  40 owners' challenges at once" "$forty_pass" "$forty_s" "$forty_ms" "$(met "$forty_pass == 40")"
printf '\n--limit-rate %s bytes/s (%s in 30 s)\n' "$rate" "$SIZE"
printf '%-34s %9.0f B/s, %+.2f%%   within 5%%: %s\n' "  push" "$lim_push" "$lim_push_off" "$(met "$lim_push_off <= 5 && $lim_push_off >= -5")"
printf '%-34s %9.0f B/s, %+.2f%%   within 5%%: %s\n' "  restore" "$lim_restore" "$lim_restore_off" "$(met "$lim_restore_off <= 5 && $lim_restore_off >= -5")"
printf '\nunder a flood (target: at most 2 x alone) %8s %10s %9s\n' "alone" "flooded" "ratio"
printf '%-34s %9.2fs %9.2fs %9.3f\n' "  incremental push" "$u_push" "$f_push" "$(ratio "$f_push" "$u_push")"
printf '%-34s %9.2fs %9.2fs %9.3f\n' "  full restore" "$u_restore" "$f_restore" "$(ratio "$f_restore" "$u_restore")"
printf '%-34s %8.1fms %8.1fms %9.3f\n' "  challenge" "$u_ch" "$f_ch" "$(ratio "$f_ch" "$u_ch")"
printf '%-34s %7s KiB %6s KiB\n' "  server peak memory" "$alone_rss" "$flood_rss"
printf '%-34s %s\n' "  the flood sent" "$flood_sent"
printf '\nhistory (target: no measurable cost) %12s %10s %9s\n' "with" "without" "ratio"
printf '%-34s %9.2fs %9.2fs %9.3f\n' "  incremental push (14d, 50%)" "$hist_with" "$hist_without" "$(ratio "$hist_with" "$hist_without")"
printf '30 daily generations, %s extents (1%%) changed a day: the holder keeps\n' "$daily"
printf '%-34s %3s generations, %s bytes (%.2f x the volume)\n' "  terms 30d, 50%" "$days_g30" "$days_b30" "$(ratio "$days_b30" "$size")"
printf '%-34s %3s generations, %s bytes (%.2f x the volume)\n\n' "  terms 14d, 25% (the default)" "$days_g14" "$days_b14" "$(ratio "$days_b14" "$size")"

jq -cn \
  --arg size "$SIZE" --argjson runs "$RUNS" \
  --argjson push_ours "$push_ours" --argjson push_ssh "$push_ssh" --argjson push_daemon "$push_daemon" \
  --argjson push_dsync "$push_dsync" --argjson push_compute "$push_compute" --argjson push_quic "$push_quic" \
  --argjson push_quic_cpu "$push_quic_cpu" --argjson push_floor "$push_floor" \
  --argjson push_disk "$push_disk" --argjson push_depth "$PUSH_DEPTH" \
  --argjson incr_ours "$incr_ours" --argjson incr_ssh "$incr_ssh" --argjson incr_sent "$incr_sent" --argjson b3 "$b3" \
  --argjson restore_ours "$restore_ours" --argjson restore_ssh "$restore_ssh" \
  --argjson rtt_ms "$rtt_ms" --argjson wire "$wire" --argjson read_bytes "$read_bytes" --argjson all50 "$all50" \
  --argjson mem_client "$mem_client" --argjson mem_server "$mem_server" \
  --argjson mem4_client "$mem4_client" --argjson mem4_server "$mem4_server" \
  --argjson mem16_client "$mem16_client" --argjson mem16_server "$mem16_server" \
  --argjson memx_client "$memx_client" --argjson memx_server "$memx_server" \
  --argjson memq_client "$memq_client" --argjson memq_server "$memq_server" \
  --argjson pex_client "$pex_client" --argjson pex_server "$pex_server" \
  --argjson tibx_client "$tibx_client" --argjson tibx_server "$tibx_server" \
  --argjson hist_kept "$hist_kept" --argjson hs_client "$hs_client" --argjson hs_server "$hs_server" \
  --argjson hb_client "$hb_client" --argjson hb_server "$hb_server" \
  --argjson phx_client "$phx_client" --argjson phx_server "$phx_server" \
  --argjson tibh_client "$tibh_client" --argjson tibh_server "$tibh_server" --argjson restore_floor "$restore_floor" \
  --argjson restore_sshf "$restore_sshf" --argjson restore_depth "$RESTORE_DEPTH" \
  --argjson slope_client "$slope_client" --argjson slope_server "$slope_server" \
  --argjson tib_client "$tib_client" --argjson tib_server "$tib_server" \
  --argjson busy_alone "$busy_alone" --argjson busy_wall "$busy_wall" --argjson busy_ratio "$busy_ratio" \
  --argjson busy_spread "$busy_spread" --argjson busy_rss "$busy_rss" \
  --argjson forty_pass "$forty_pass" --argjson forty_s "$forty_s" --argjson forty_ms "$forty_ms" \
  --argjson rate "$rate" --argjson lim_push "$lim_push" --argjson lim_restore "$lim_restore" \
  --argjson tcp_gbit "$tcp_gbit" --argjson disk_mbs "$disk_mbs" --arg cache "$cache" \
  --argjson u_push "$u_push" --argjson u_restore "$u_restore" --argjson u_ch "$u_ch" \
  --argjson f_push "$f_push" --argjson f_restore "$f_restore" --argjson f_ch "$f_ch" \
  --argjson alone_rss "$alone_rss" --argjson flood_rss "$flood_rss" --argjson flood_sent "$flood_sent" \
  --argjson hist_with "$hist_with" --argjson hist_without "$hist_without" --argjson daily "$daily" \
  --argjson days_g30 "$days_g30" --argjson days_b30 "$days_b30" --argjson days_g14 "$days_g14" \
  --argjson days_b14 "$days_b14" --argjson sizeb "$size" '{
    size: $size, runs: $runs,
    initial_push: {ours_s: $push_ours, rsync_ssh_s: $push_ssh, rsync_daemon_s: $push_daemon,
                   rsync_daemon_fsync_s: $push_dsync,
                   ratio_ssh: ($push_ours / $push_ssh), ratio_daemon: ($push_ours / $push_daemon),
                   ratio_daemon_fsync: ($push_ours / $push_dsync),
                   computing_alone_s: $push_compute, quic_alone_s: $push_quic, quic_alone_cpu_s: $push_quic_cpu,
                   least_s: $push_floor, ratio_least: ($push_ours / $push_floor),
                   least_ratio_ssh: ($push_floor / $push_ssh), least_ratio_daemon_fsync: ($push_floor / $push_dsync),
                   disk_floor_s: $push_disk, disk_floor_depth: $push_depth, ratio_disk_floor: ($push_ours / $push_disk),
                   disk_floor_ratio_daemon_fsync: ($push_disk / $push_dsync)},
    incremental_push: {ours_s: $incr_ours, rsync_ssh_s: $incr_ssh, ratio_ssh: ($incr_ours / $incr_ssh), ours_bytes_sent: $incr_sent,
                       b3sum_s: $b3, ratio_b3sum: ($incr_ours / $b3)},
    restore: {ours_s: $restore_ours, rsync_ssh_s: $restore_ssh, ratio_ssh: ($restore_ours / $restore_ssh), rsync_ssh_fsync_s: $restore_sshf, ratio_ssh_fsync: ($restore_ours / $restore_sshf), disk_floor_s: $restore_floor, disk_floor_depth: $restore_depth},
    challenge: {rtt_ms: $rtt_ms, wire_bytes: $wire, holder_read_bytes: $read_bytes, all_50_contracts_s: $all50},
    peak_rss_kib: {client: $mem_client, server: $mem_server, client_4x: $mem4_client, server_4x: $mem4_server,
                   client_16x: $mem16_client, server_16x: $mem16_server,
                   client_64k_extents: $memx_client, server_64k_extents: $memx_server,
                   client_64k_extents_quarter: $memq_client, server_64k_extents_quarter: $memq_server,
                   per_extent_bytes: {client: $pex_client, server: $pex_server},
                   at_1tib_by_per_extent: {client: $tibx_client, server: $tibx_server},
                   history: {generations: $hist_kept, small_kib: {client: $hs_client, server: $hs_server},
                             large_kib: {client: $hb_client, server: $hb_server},
                             per_extent_bytes: {client: $phx_client, server: $phx_server},
                             at_1tib_by_per_extent: {client: $tibh_client, server: $tibh_server}},
                   slope_kib_per_gib: {client: $slope_client, server: $slope_server},
                   at_1tib_by_slope: {client: $tib_client, server: $tib_server}},
    busy_holder: {alone_s: $busy_alone, four_at_once_s: $busy_wall, aggregate_ratio: $busy_ratio,
                  slowest_over_fastest: $busy_spread, holder_peak_kib: $busy_rss,
                  forty_challenges: {passed: $forty_pass, secs: $forty_s, median_ms: $forty_ms}},
    limit_rate: {rate: $rate, push_bytes_per_s: $lim_push, restore_bytes_per_s: $lim_restore,
                 push_off: ($lim_push / $rate - 1), restore_off: ($lim_restore / $rate - 1)},
    machine: {loopback_tcp_gbit: $tcp_gbit, disk_read_mb_s: $disk_mbs, disk_read_cache: $cache},
    flood: {alone: {push_s: $u_push, restore_s: $u_restore, challenge_ms: $u_ch, server_peak_kib: $alone_rss},
            flooded: {push_s: $f_push, restore_s: $f_restore, challenge_ms: $f_ch, server_peak_kib: $flood_rss},
            ratio: {push: ($f_push / $u_push), restore: ($f_restore / $u_restore), challenge: ($f_ch / $u_ch)},
            sent: $flood_sent},
    history: {incremental_push: {with_s: $hist_with, without_s: $hist_without, ratio: ($hist_with / $hist_without)},
              thirty_days: {extents_changed_daily: $daily,
                            terms_30d_50pct: {generations: $days_g30, holder_bytes: $days_b30, volumes: ($days_b30 / $sizeb)},
                            terms_14d_25pct: {generations: $days_g14, holder_bytes: $days_b14, volumes: ($days_b14 / $sizeb)}}}
  }'

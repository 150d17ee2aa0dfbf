#!/usr/bin/env bash
# Ka'ana like's backup pipeline, for cron: an optional snapshot hook, then
# `kaana-sync push --all`, `kaana-challenge --all`, `kaana-prune` and `kaana-offer ensure` (which
# replaces copies that no longer count, or offers when nothing acceptable is on offer).
#
# The tools' JSON lines go to stdout (send them to a log); when something needs a person, the
# last line on stderr says what, in one line, and the exit code is 1 (2 if a step could not run).
#
# Environment:
#   KAANA_HOME            the node's state directory (or pass --home DIR)
#   KAANA_SNAPSHOT_HOOK   a command run first, e.g. one that freezes or snapshots the volume's
#                         file system; the pipeline stops (exit 2) if it fails
#   KAANA_BIN             where the kaana-* tools are, if not on PATH
set -uo pipefail

if [ "${1:-}" = "--home" ] && [ -n "${2:-}" ]; then
  export KAANA_HOME="$2"
  shift 2
fi
if [ $# -gt 0 ]; then
  echo "usage: backup.sh [--home DIR]" >&2
  exit 2
fi
[ -n "${KAANA_BIN:-}" ] && export PATH="$KAANA_BIN:$PATH"

# One run at a time: a push held to a home uplink's rate (or a holder taking it slowly) can
# outlast the night, and a second run on top of it would push the same contracts at once.
home=${KAANA_HOME:-${XDG_STATE_HOME:-${HOME:-}/.local/state}/kaana}
if [ -d "$home" ] && command -v flock >/dev/null 2>&1; then
  # (fd 9 is closed for the steps: a process one leaves behind must not hold the lock.)
  exec 9>>"$home/backup.lock"
  if ! flock -n 9; then
    echo "backup.sh: the last run (of $home) is still going; this one did nothing" >&2
    exit 1
  fi
fi

reasons=()
worst=0
note() { # CODE REASON
  reasons+=("$2")
  [ "$1" -gt "$worst" ] && worst=$1
}
# Names what went wrong from a step's JSON lines: contracts whose push failed, peers that failed
# or could not be reached, breaches.
summarise() { # STEP OUTPUT
  command -v jq >/dev/null 2>&1 || { echo "$1 needs attention"; return; }
  case "$1" in
    push) jq -rs '[.[] | select(.ok == false) | "push to \(.peer[0:8]) failed"] | unique | join(", ")' <<<"$2" ;;
    challenge) jq -rs '[.[] | select(.breach == true) | "BREACH by \(.peer[0:8])"] + [.[] | select(.breach != true and .result != "pass") | "\(.kind) of \(.peer[0:8]): \(.result)"] | unique | join(", ")' <<<"$2" ;;
    ensure) jq -rs '[.[] | select(.action == "offer") | "replicas missing: no acceptable offer, this node offers"] + [.[] | select((.action == "take" or .action == "push") and .done == false) | "ensure could not \(.action) (\(.reason))"] | unique | join(", ")' <<<"$2" ;;
  esac
}

step() { # NAME COMMAND...
  local name=$1; shift
  local out code
  out=$("$@" 9>&-)
  code=$?
  [ -n "$out" ] && printf '%s\n' "$out"
  case $code in
    0) ;;
    1) local what; what=$(summarise "$name" "$out"); note 1 "${what:-$name needs attention}" ;;
    *) note 2 "$name failed (exit $code)" ;;
  esac
}

if [ -n "${KAANA_SNAPSHOT_HOOK:-}" ]; then
  if ! bash -c "$KAANA_SNAPSHOT_HOOK" >&2 9>&-; then
    echo "backup.sh: the snapshot hook failed; nothing was pushed" >&2
    exit 2
  fi
fi
step push kaana-sync push --all
step challenge kaana-challenge --all
step prune kaana-prune
step ensure kaana-offer ensure

if [ "$worst" -gt 0 ]; then
  (IFS=';'; echo "backup.sh: needs attention: ${reasons[*]}" | sed 's/;/; /g') >&2
fi
exit "$worst"

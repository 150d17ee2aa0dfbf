#!/usr/bin/env bash
# Installs Ka'ana like's tools where a Debian machine expects them, or removes them.
#
# usage: scripts/install.sh [--uninstall] [--prefix DIR] [--bin-dir DIR] [--user NAME]
#                           [--home DIR] [--storage DIR] [--log-dir DIR] [--system-dir DIR]
#                           [--logrotate-dir DIR] [--mailto ADDRESS] [--no-system]
#
#   --prefix DIR      where the tools, man pages, completions and scripts go [/usr/local]
#   --bin-dir DIR     the built tools to install [the repository's target/release]
#   --user NAME       the node's user [kaana]
#   --home DIR        the node's state directory [/var/lib/kaana]
#   --storage DIR     where peers' data is kept, if not in the state directory (the unit may
#                     write there)
#   --mailto ADDRESS  where cron mails what needs a person [kept from the user's crontab]
#   --log-dir DIR     where cron's lines write their logs [/var/log/kaana]
#   --system-dir DIR  where the systemd unit goes [/etc/systemd/system]
#   --logrotate-dir DIR  where logrotate's file for the logs goes [/etc/logrotate.d]
#   --no-system       only files under --prefix (no unit, no crontab, no log directory or
#                     rotation, no user needed): for a try-out, or a machine set up by other means
# Values hold letters, digits and . _ / @ + : = - only (they go into the unit, crontab and
# logrotate's file), and --log-dir is not --home.
#
# Installs: PREFIX/bin/kaana-{offer,sync,challenge,prune}; their man pages
# (PREFIX/share/man/man1) and bash completions (PREFIX/share/bash-completion/completions);
# PREFIX/share/kaana/{backup.sh,crontab,kaana.logrotate,70-kaana-volume.rules.example}; and,
# unless --no-system (then run it as root): the systemd unit (not started), the crontab lines for
# the user (between "# >>> kaana" and "# <<< kaana"; the user's other lines stay, and so does its
# MAILTO unless --mailto), the log directory owned by the user, and logrotate's file for the
# logs and the node's events.jsonl (monthly, or past 64 MB; 24 kept). Paths in the unit and
# crontab follow the options. It creates no user and no node: see the README, "A real set-up".
# --uninstall removes what it installed (the state directory, logs, user and the crontab's
# other lines stay). Exit 0 done, 2 could not.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

prefix=/usr/local bin_dir="" user=kaana home=/var/lib/kaana log_dir=/var/log/kaana
system_dir=/etc/systemd/system logrotate_dir=/etc/logrotate.d system=yes uninstall=no storage="" mailto=""
tools=(kaana-offer kaana-sync kaana-challenge kaana-prune)
die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) uninstall=yes; shift ;;
    --no-system) system=no; shift ;;
    --prefix|--bin-dir|--user|--home|--storage|--log-dir|--system-dir|--logrotate-dir|--mailto)
      [ $# -ge 2 ] || die "$1 needs a value"
      # It goes into the unit, the crontab and logrotate's file, each with its own special
      # characters: plain names only.
      case "$2" in
        ""|*[![:alnum:]._/@+:=-]*)
          die "$1 '$2': only letters, digits and . _ / @ + : = - in it, please (no spaces: it goes into the unit, crontab and log rotation)" ;;
      esac
      case "$1" in
        --prefix) prefix=$2 ;; --bin-dir) bin_dir=$2 ;; --user) user=$2 ;; --home) home=$2 ;;
        --storage) storage=$2 ;; --log-dir) log_dir=$2 ;; --system-dir) system_dir=$2 ;; --mailto) mailto=$2 ;;
        --logrotate-dir) logrotate_dir=$2 ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
# Paths as given, from where it was run; then it works from the repository's root.
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
prefix=$(absolute "$prefix") bin_dir=$(absolute "${bin_dir:-$repo/target/release}") home=$(absolute "$home")
log_dir=$(absolute "$log_dir") system_dir=$(absolute "$system_dir") logrotate_dir=$(absolute "$logrotate_dir")
[ -n "$storage" ] && storage=$(absolute "$storage")
# logrotate's file names both: the logs' *.jsonl would take in events.jsonl twice.
[ "${log_dir%/}" != "${home%/}" ] || die "--log-dir $log_dir: not the state directory itself, please"
# The user's group for logrotate's `su`, as a number (a name may hold spaces, or be missing).
group=$(id -g "$user" 2>/dev/null) || group=$user
cd "$repo"
if [ "$system" = yes ] && [ "$(id -u)" != 0 ]; then
  die "installing the unit, crontab, log directory and its rotation needs root (or pass --no-system)"
fi
share=$prefix/share/kaana
man_dir=$prefix/share/man/man1
completions=$prefix/share/bash-completion/completions
unit=$system_dir/kaana-sync.service
rotation=$logrotate_dir/kaana

# The unit, crontab and rotation, with this machine's paths and user.
localise() {
  sed -e "s#/usr/local/share/kaana#$share#g" -e "s#/usr/local/bin#$prefix/bin#g" \
      -e "s#/var/lib/kaana#$home#g" -e "s#/var/log/kaana#$log_dir#g" \
      -e "s#^User=kaana#User=$user#" -e "s#-u kaana #-u $user #g" \
      -e "s#^\([[:space:]]*su\) kaana kaana\$#\1 $user $group#" \
      -e "s#^ReadWritePaths=.*#ReadWritePaths=$home${storage:+ $storage}#" "$1"
}
# The user's crontab without our lines.
others() { crontab -u "$user" -l 2>/dev/null | sed '/^# >>> kaana/,/^# <<< kaana/d' || true; }

if [ "$uninstall" = yes ]; then
  for t in "${tools[@]}"; do
    rm -f "$prefix/bin/$t" "$man_dir/$t.1" "$completions/$t"
  done
  rm -f "$share/backup.sh" "$share/crontab" "$share/kaana.logrotate" "$share/70-kaana-volume.rules.example"
  rmdir "$share" 2>/dev/null || true
  if [ "$system" = yes ]; then
    if [ -f "$unit" ]; then
      command -v systemctl >/dev/null && systemctl disable --now kaana-sync 2>/dev/null || true
      rm -f "$unit"
      command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
    fi
    rm -f "$rotation"
    # (grep reads it all: with -q, a crontab cut short by its early exit failed the pipe.)
    if command -v crontab >/dev/null && crontab -u "$user" -l 2>/dev/null | grep '^# >>> kaana' >/dev/null; then
      rest=$(others)
      if [ -n "$(grep -v '^[[:space:]]*\(#\|$\)' <<<"$rest")" ]; then
        printf '%s\n' "$rest" | crontab -u "$user" -
      else
        crontab -u "$user" -r
      fi
    fi
  fi
  where=$prefix
  [ "$system" = yes ] && where="$prefix, the unit and $user's crontab"
  echo "install.sh: removed from $where; $home and $log_dir are kept" >&2
  exit 0
fi

for t in "${tools[@]}"; do
  [ -x "$bin_dir/$t" ] || die "$bin_dir/$t is missing: build first (cargo build --release), or pass --bin-dir"
done
if [ "$system" = yes ]; then
  id "$user" >/dev/null 2>&1 || die "no user $user: create it first (useradd --system --home-dir $home --create-home $user)"
fi
install -d "$prefix/bin" "$man_dir" "$completions" "$share"
for t in "${tools[@]}"; do
  install -m 0755 "$bin_dir/$t" "$prefix/bin/$t"
  "$prefix/bin/$t" man >"$man_dir/$t.1"
  "$prefix/bin/$t" completions bash >"$completions/$t"
done
install -m 0755 scripts/backup.sh "$share/backup.sh"
localise scripts/crontab.example >"$share/crontab"
localise scripts/kaana.logrotate >"$share/kaana.logrotate"
install -m 0644 scripts/70-kaana-volume.rules.example "$share/70-kaana-volume.rules.example"
if [ "$system" = yes ]; then
  install -d -m 0750 -o "$user" -g "$(id -gn "$user")" "$log_dir"
  install -d "$system_dir"
  localise scripts/kaana-sync.service >"$unit"
  # logrotate reads only files owned by root and written by no one else.
  install -d "$logrotate_dir"
  install -m 0644 "$share/kaana.logrotate" "$rotation"
  command -v logrotate >/dev/null || echo "install.sh: no logrotate here: apt-get install logrotate, or" \
    "$log_dir and $home/events.jsonl grow without end" >&2
  command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
  if command -v crontab >/dev/null; then
    # Our lines between markers, after the user's own; its MAILTO kept unless --mailto.
    # (A user with no crontab yet: `crontab -l` fails, and there is no MAILTO to keep.)
    [ -z "$mailto" ] && mailto=$(crontab -u "$user" -l 2>/dev/null | sed -n 's/^MAILTO=//p' | tail -1 || true)
    rest=$(others) # read whole before the new table is written
    { if [ -n "$rest" ]; then printf '%s\n' "$rest"; fi
      echo "# >>> kaana (scripts/install.sh; --uninstall removes these lines)"
      if [ -n "$mailto" ]; then sed "s#^MAILTO=.*#MAILTO=$mailto#" "$share/crontab"; else cat "$share/crontab"; fi
      echo "# <<< kaana"
    } | crontab -u "$user" -
  else
    echo "install.sh: no crontab command here: install $share/crontab for $user by hand" >&2
  fi
  echo "install.sh: installed in $prefix; unit $unit (start it: systemctl enable --now kaana-sync);" \
       "crontab for $user (set MAILTO: crontab -u $user -e); logs in $log_dir, rotated by $rotation" >&2
else
  echo "install.sh: installed in $prefix (no unit, crontab or log directory: --no-system)" >&2
fi

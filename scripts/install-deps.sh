#!/usr/bin/env bash
# Installs what building, testing and the demo need, when it is missing. Safe to run again.
# Debian packages: e2fsprogs (mke2fs, debugfs), qemu-utils (qemu-img, qemu-io) for real LUKS
# volumes; iproute2 for the network-namespace tests; miniupnpd-nftables and nftables for the
# port-mapping test (a real UPnP router in a namespace; Debian does not start it as a service
# unless asked); jq for the demo and scripts; util-linux-extra (fincore) for the test that a push
# leaves the page cache as it found it; logrotate (and gzip) for the test of the installed
# rotation. Rust: cargo-nextest runs the tests.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

need_apt=()
command -v mke2fs >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v debugfs >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v qemu-img >/dev/null 2>&1 || need_apt+=(qemu-utils)
command -v qemu-io >/dev/null 2>&1 || need_apt+=(qemu-utils)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v miniupnpd >/dev/null 2>&1 || need_apt+=(miniupnpd-nftables)
command -v fincore >/dev/null 2>&1 || need_apt+=(util-linux-extra)
command -v logrotate >/dev/null 2>&1 || need_apt+=(logrotate)
command -v gzip >/dev/null 2>&1 || need_apt+=(gzip)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-deps: installing ${need_apt[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is missing: install Rust from https://rustup.rs first" >&2
  exit 2
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

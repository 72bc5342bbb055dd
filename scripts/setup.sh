#!/usr/bin/env bash
# Installs what mbx's demo, tests and benchmarks need on Debian 12 / Ubuntu
# (as root). Idempotent; safe to run every time. With --clang also the BPF
# toolchain, needed only to regenerate the committed BPF objects.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root" >&2; exit 1; }

pkgs=(iproute2 ethtool curl nginx-light iperf3 wrk tcpdump tshark libpcap-dev gcc nftables util-linux procps iputils-ping
  libdpdk-dev dpdk pkg-config libnuma-dev) # DPDK: the dpdk-tagged build and its tests
[ "${1:-}" = "--clang" ] && pkgs+=(clang llvm libbpf-dev linux-libc-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian starts nginx on install; mbx's tests run their own inside namespaces.
if command -v service >/dev/null && service nginx status >/dev/null 2>&1; then
  service nginx stop >/dev/null 2>&1 || true
fi
command -v go >/dev/null || { echo "setup.sh: Go 1.26 or newer is needed (https://go.dev/dl)" >&2; exit 1; }

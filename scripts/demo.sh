#!/usr/bin/env bash
# The DPVS tutorial's two-arm Full-NAT, on this machine, in namespaces:
# build, lab up, mbx run, the tutorial's ipvsadm commands, curl the VIP,
# ipvsadm -ln with counters, lab down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
go build -o mbx ./cmd/mbx
MBX="$PWD/mbx"
export MBX_SOCKET=/run/mbx/demo.sock
LB="ip netns exec mbxl-0-demo-lb"
CLIENT="ip netns exec mbxl-0-demo-client"

cleanup() {
  [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
  "$MBX" lab down --name demo
}
trap cleanup EXIT

run() { echo "+ $*"; "$@"; }

run "$MBX" lab up --name demo fnat-two-arm
$LB "$MBX" run --iface wan0 --iface lan0 2>/tmp/mbx-demo.log &
DAEMON=$!
for _ in $(seq 50); do [ -S "$MBX_SOCKET" ] && break; sleep 0.1; done

echo "# the tutorial's FNAT commands, lab addresses (inside the lb namespace)"
run $LB "$MBX" addr add 198.18.0.100/32 dev wan0
run $LB "$MBX" ipvsadm -A -t 198.18.0.100:80 -s rr
run $LB "$MBX" ipvsadm -a -t 198.18.0.100:80 -r 198.18.1.2 -b
run $LB "$MBX" ipvsadm -a -t 198.18.0.100:80 -r 198.18.1.3 -b
run $LB "$MBX" ipvsadm --add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0
run $LB "$MBX" ipvsadm -ln
run $LB "$MBX" ipvsadm -G

echo "# the client curls the VIP: both real servers answer and see the LIP"
for _ in 1 2 3 4; do run $CLIENT curl -s http://198.18.0.100/; done

sleep 1.5 # connection counts come from the once-a-second sweep
run $LB "$MBX" ipvsadm -ln
run $LB "$MBX" ipvsadm -ln --stats
run $LB "$MBX" ipvsadm -lnc

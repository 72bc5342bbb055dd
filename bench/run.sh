#!/usr/bin/env bash
# mbx's benchmarks in one command (root): the forwarder comparison through
# the lab (plain XDP_REDIRECT, minimal stateless and stateful forwarders, kernel routing,
# nftables DNAT, every mbx mode, interleaved; then again with frames that
# arrive warm) and the XDP program's cost per packet under BPF_PROG_TEST_RUN
# with a restore harness. Results: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== forwarder cost per packet through the lab"
go run ./bench/fwdbench -rounds "${ROUNDS:-5}" -duration "${DURATION:-2s}"
echo
echo "== the same with the generator on the forwarder's CPU (frames arrive warm)"
FWDBENCH_ONLY=xdp-redirect,xdp-stateless,xdp-conntrack,mbx-fnat,mbx-dr,mbx-nat,mbx-tunnel,xdp-redirect6,mbx-fnat6,mbx-nat64 \
	go run ./bench/fwdbench -rounds "${ROUNDS:-5}" -duration "${DURATION:-2s}" -gencpu 0
echo
echo "== XDP program cost per packet (BPF_PROG_TEST_RUN, restore harness)"
go test -run '^$' -bench . -benchtime 5000000x -count "${COUNT:-5}" ./bench/ | grep -E 'ns/pkt|^ok|FAIL'

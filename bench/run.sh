#!/usr/bin/env bash
# mbx's benchmarks in one command (root): the forwarder comparison through
# the lab (plain XDP_REDIRECT, kernel routing, nftables DNAT, mbx Full-NAT,
# interleaved) and the XDP program's cost per packet under BPF_PROG_TEST_RUN
# with a restore harness. Results: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== forwarder cost per packet through the lab"
go run ./bench/fwdbench -rounds "${ROUNDS:-5}" -duration "${DURATION:-2s}"
echo
echo "== XDP program cost per packet (BPF_PROG_TEST_RUN, restore harness)"
go test -run '^$' -bench . -benchtime 5000000x -count "${COUNT:-5}" ./bench/ | grep -E 'ns/pkt|^ok|FAIL'

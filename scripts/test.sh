#!/usr/bin/env bash
# The whole test suite: datapath vectors (BPF_PROG_TEST_RUN), unit tests and
# end-to-end tests with real clients in network namespaces. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
go build ./...
go test -count=1 -timeout 20m "$@" ./...
# The DPDK binding and backend (build tag dpdk): in-memory vdevs, no hugepages.
go test -tags dpdk -count=1 -timeout 5m "$@" ./backend/dpdk/...

// Package dpdk is mbx's DPDK backend: polling workers that move packets
// between DPDK ports (backend/dpdk/rte) through the Go datapath
// (backend/dpdk/datapath). Everything but this file is behind the dpdk
// build tag. See docs/dpdk.md for what is built.
package dpdk

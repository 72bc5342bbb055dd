// Package rte is mbx's own small cgo binding over DPDK 22.11 (Debian's
// libdpdk-dev): EAL initialisation, packet mempools, ethdev ports and
// queues, rx/tx bursts, and mbuf data access from Go.
//
// Hand-written because github.com/yerden/go-dpdk, the maintained binding,
// cannot be fetched where mbx is built and tested; it covers only what the
// DPDK backend needs. Everything but this file is behind the dpdk build
// tag: the default build needs no DPDK.
//
// Cost model: a cgo call is ~34 ns, so there is one per burst, never one
// per packet. A Burst keeps its mbuf pointers and per-packet descriptors in
// C memory; Go reads and writes packet bytes directly through
// Burst.Data, valid until the burst is sent or freed.
package rte

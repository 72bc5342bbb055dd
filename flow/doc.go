// Package flow holds what every datapath agrees on about one flow: the flow
// key, the flow hash, and the connection-state logic (IPVS's TCP state table
// and timeouts). The XDP datapath receives the table and timeouts as data
// from here; the DPDK datapath runs them in Go. Nothing here is written twice.
package flow

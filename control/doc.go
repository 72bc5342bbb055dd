// Package control is the daemon's control plane: it owns the desired state
// (lb.Config), applies changes whole or not at all (validate, put addresses on
// devices, program the backend, roll back on failure), and serves one JSON API
// on a unix socket that every client (mbx ipvsadm, tests, tools) uses.
package control

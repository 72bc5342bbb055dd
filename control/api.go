package control

import (
	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/health"
	"github.com/mbx-net/mbx/lb"
)

// Status is the running configuration with its counters.
type Status struct {
	Backend    string                      `json:"backend"`
	Services   []ServiceStatus             `json:"services"`
	Datapath   map[string]uint64           `json:"datapath"`
	Ifaces     map[string]backend.Verdicts `json:"ifaces"`
	ConnsMax   int                         `json:"conns_max"`
	Entries    int                         `json:"entries"`
	Evicted    uint64                      `json:"evicted"`
	LocalPorts int                         `json:"local_ports"`
	Timeouts   lb.Timeouts                 `json:"timeouts"` // effective, seconds
	// Workers: a polling data plane's per-worker counters (dpdk).
	Workers []backend.WorkerCounters `json:"workers,omitempty"`
}

// ServiceStatus is one service with its counters.
type ServiceStatus struct {
	lb.Service
	Stats      backend.Counters `json:"stats"`
	RealStats  []RealStatus     `json:"real_stats"`
	LaddrStats []LaddrStatus    `json:"laddr_stats"`
}

// RealStatus is a real server with its counters and, when it is checked,
// its health.
type RealStatus struct {
	lb.Real
	backend.RealStatus
	Health *health.State `json:"health,omitempty"`
}

// LaddrStatus is a LIP with its usage.
type LaddrStatus struct {
	lb.LocalAddr
	backend.LaddrStatus
}

// OpsRequest asks for ops to be applied together.
type OpsRequest struct {
	Ops []lb.Op `json:"ops"`
	// Command is the command line that asked (e.g. "ipvsadm -a -t ..."),
	// recorded in the operation's span and log.
	Command string `json:"command,omitempty"`
}

// ErrorReply carries a one-line error.
type ErrorReply struct {
	Error string `json:"error"`
}

// LogLevel is the daemon's log level (debug, info, warn, error).
type LogLevel struct {
	Level string `json:"level"`
}

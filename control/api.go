package control

import (
	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/health"
	"github.com/mbx-net/mbx/lb"
)

// Status is the running configuration with its counters.
type Status struct {
	Backend  string            `json:"backend"`
	Services []ServiceStatus   `json:"services"`
	Datapath map[string]uint64 `json:"datapath"`
	ConnsMax int               `json:"conns_max"`
	Timeouts lb.Timeouts       `json:"timeouts"` // effective, seconds
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
}

// ErrorReply carries a one-line error.
type ErrorReply struct {
	Error string `json:"error"`
}

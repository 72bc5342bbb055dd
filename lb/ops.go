package lb

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// OpKind names a change to the desired state.
type OpKind string

const (
	OpAddService  OpKind = "add-service"
	OpEditService OpKind = "edit-service"
	OpDelService  OpKind = "del-service"
	OpClear       OpKind = "clear"
	OpAddReal     OpKind = "add-real"
	OpEditReal    OpKind = "edit-real"
	OpDelReal     OpKind = "del-real"
	OpAddLaddr    OpKind = "add-laddr"
	OpDelLaddr    OpKind = "del-laddr"
	OpAddAddr     OpKind = "add-addr"
	OpDelAddr     OpKind = "del-addr"
	OpSetTimeout  OpKind = "set-timeouts"
	OpSetMaglev   OpKind = "set-maglev"
)

// Op is one change; which fields matter depends on Kind.
type Op struct {
	Kind      OpKind       `json:"kind"`
	Service   ServiceKey   `json:"service"`
	Scheduler string       `json:"scheduler,omitempty"`
	Real      Real         `json:"real"`
	Laddr     LocalAddr    `json:"laddr"`
	Addr      IfAddr       `json:"addr"`
	Timeouts  Timeouts     `json:"timeouts"`
	Maglev    MaglevParams `json:"maglev"`
	// Persistence for add/edit-service in seconds; -1 = unchanged (edit).
	Persistence int `json:"persistence,omitempty"`
}

// DefaultScheduler is used when -s is omitted: ipvsadm's default.
const DefaultScheduler = "wlc"

// Apply applies op to c. On error c may be partly changed: apply to a Clone
// and keep it only when every op and Validate succeed (see Config.Do).
func (c *Config) Apply(op Op) error {
	switch op.Kind {
	case OpClear:
		c.Services = nil
		return nil
	case OpSetMaglev:
		c.Maglev = op.Maglev
		return nil
	case OpSetTimeout:
		// As ipvsadm --set: a 0 keeps the current value.
		t := &c.Timeouts
		for _, p := range []struct {
			dst *int
			v   int
		}{{&t.TCP, op.Timeouts.TCP}, {&t.TCPFin, op.Timeouts.TCPFin}, {&t.UDP, op.Timeouts.UDP}} {
			if p.v != 0 {
				*p.dst = p.v
			}
		}
		return nil
	case OpAddAddr:
		if slices.Contains(c.Addresses, op.Addr) {
			return fmt.Errorf("address %s is already on %s", op.Addr.Prefix, op.Addr.Dev)
		}
		c.Addresses = append(c.Addresses, op.Addr)
		return nil
	case OpDelAddr:
		i := slices.Index(c.Addresses, op.Addr)
		if i < 0 {
			return fmt.Errorf("address %s on %s was not added by mbx", op.Addr.Prefix, op.Addr.Dev)
		}
		c.Addresses = slices.Delete(c.Addresses, i, i+1)
		return nil
	}

	svc := c.Service(op.Service)
	if op.Kind == OpAddService {
		if svc != nil {
			return fmt.Errorf("service %s already exists", op.Service)
		}
		sched := op.Scheduler
		if sched == "" {
			sched = DefaultScheduler
		}
		c.Services = append(c.Services, &Service{Key: op.Service, Scheduler: sched, Persistence: max(op.Persistence, 0)})
		c.sortServices()
		return nil
	}
	if svc == nil {
		return fmt.Errorf("service %s does not exist", op.Service)
	}
	switch op.Kind {
	case OpEditService:
		if op.Scheduler != "" {
			svc.Scheduler = op.Scheduler
		}
		if op.Persistence >= 0 {
			svc.Persistence = op.Persistence
		}
	case OpDelService:
		c.Services = slices.DeleteFunc(c.Services, func(s *Service) bool { return s == svc })
	case OpAddReal:
		if svc.realIndex(op.Real) >= 0 {
			return fmt.Errorf("real server %s already exists in service %s", op.Real.AddrPort(), op.Service)
		}
		svc.Reals = append(svc.Reals, op.Real)
	case OpEditReal:
		i := svc.realIndex(op.Real)
		if i < 0 {
			return fmt.Errorf("real server %s does not exist in service %s", op.Real.AddrPort(), op.Service)
		}
		r := op.Real
		if r.Weight < 0 { // -e without -w keeps the weight
			r.Weight = svc.Reals[i].Weight
		}
		svc.Reals[i] = r
	case OpDelReal:
		i := svc.realIndex(op.Real)
		if i < 0 {
			return fmt.Errorf("real server %s does not exist in service %s", op.Real.AddrPort(), op.Service)
		}
		svc.Reals = slices.Delete(svc.Reals, i, i+1)
	case OpAddLaddr:
		if slices.ContainsFunc(svc.LocalAddrs, func(l LocalAddr) bool { return l.Addr == op.Laddr.Addr }) {
			return fmt.Errorf("local address %s already exists in service %s", op.Laddr.Addr, op.Service)
		}
		svc.LocalAddrs = append(svc.LocalAddrs, op.Laddr)
	case OpDelLaddr:
		i := slices.IndexFunc(svc.LocalAddrs, func(l LocalAddr) bool { return l.Addr == op.Laddr.Addr })
		if i < 0 {
			return fmt.Errorf("local address %s does not exist in service %s", op.Laddr.Addr, op.Service)
		}
		svc.LocalAddrs = slices.Delete(svc.LocalAddrs, i, i+1)
	default:
		return fmt.Errorf("unknown operation %q", op.Kind)
	}
	return nil
}

func (s *Service) realIndex(r Real) int {
	return slices.IndexFunc(s.Reals, func(x Real) bool { return x.AddrPort() == r.AddrPort() })
}

// Do applies ops to a copy of c and validates the result; c is unchanged.
func (c *Config) Do(ops []Op) (*Config, error) {
	n := c.Clone()
	for _, op := range ops {
		if err := n.Apply(op); err != nil {
			return nil, err
		}
	}
	if err := n.Validate(); err != nil {
		return nil, err
	}
	return n, nil
}

// RealPort returns the port traffic goes to: the real's, or the service's when 0.
func (s *Service) RealPort(r Real) uint16 {
	if r.Port != 0 {
		return r.Port
	}
	return s.Key.Port
}

// ParseAddrPort parses "1.2.3.4:80" or "[v6]:80"; with defPort >= 0 the port
// may be omitted.
func ParseAddrPort(s string, defPort int) (netip.Addr, uint16, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), ap.Port(), nil
	}
	if defPort >= 0 {
		if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
			return a.Unmap(), uint16(defPort), nil
		}
	}
	return netip.Addr{}, 0, fmt.Errorf("malformed address %q (want IP:PORT)", s)
}

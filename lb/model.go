package lb

import (
	"time"

	"cmp"
	"errors"
	"fmt"
	"github.com/mbx-net/mbx/flow"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Proto is an IP protocol number (TCP or UDP).
type Proto uint8

const (
	TCP  Proto = 6
	UDP  Proto = 17
	ICMP Proto = 1 // SNAT match services only (echo, by identifier)
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case ICMP:
		return "ICMP"
	}
	return "proto" + strconv.Itoa(int(p))
}

// Forward is a forwarding method (ipvsadm -b/-g/-i/-m/-J).
type Forward string

const (
	FullNAT     Forward = "fnat"   // -b: source and destination NAT through a LIP
	DirectRoute Forward = "dr"     // -g: MAC rewrite to an on-link real server
	Tunnel      Forward = "tunnel" // -i: IP-in-IP to the real server
	Masquerade  Forward = "nat"    // -m: destination NAT, replies routed back through mbx
	SNAT        Forward = "snat"   // -J: LAN hosts out through the WAN address (match services)
)

// Forwards lists the methods mbx runs.
var Forwards = []Forward{FullNAT, DirectRoute, Tunnel, Masquerade, SNAT}

// ForwardName is the column ipvsadm -ln prints for a method.
func (f Forward) ForwardName() string {
	switch f {
	case FullNAT:
		return "FullNat"
	case DirectRoute:
		return "Route"
	case Tunnel:
		return "Tunnel"
	case Masquerade:
		return "Masq"
	case SNAT:
		return "Snat"
	}
	return string(f)
}

// Direct reports whether the real server answers clients itself (DR,
// tunnel): the packet keeps the VIP, so the port cannot change.
func (f Forward) Direct() bool { return f == DirectRoute || f == Tunnel }

// ServiceKey identifies a virtual service.
type ServiceKey struct {
	Proto Proto      `json:"proto"`
	Addr  netip.Addr `json:"addr"`
	Port  uint16     `json:"port"`
	// Match, for an SNAT match service (-H), is its canonical match text;
	// Addr and Port are then unset.
	Match string `json:"match,omitempty"`
}

func (k ServiceKey) String() string {
	if k.Match != "" {
		return "MATCH " + k.Match
	}
	return fmt.Sprintf("%s %s", k.Proto, netip.AddrPortFrom(k.Addr, k.Port))
}

func (k ServiceKey) compare(o ServiceKey) int {
	return cmp.Or(cmp.Compare(k.Match, o.Match), cmp.Compare(k.Proto, o.Proto), k.Addr.Compare(o.Addr), cmp.Compare(k.Port, o.Port))
}

// Real is a real server of a service.
type Real struct {
	Addr    netip.Addr `json:"addr"`
	Port    uint16     `json:"port"`
	Weight  int        `json:"weight"`
	Forward Forward    `json:"forward"`
	Check   Check      `json:"check"`
	// InhibitOnFailure sets weight 0 on a failed check instead of removing
	// the real server (keepalived's inhibit_on_failure).
	InhibitOnFailure bool `json:"inhibit_on_failure,omitempty"`
}

// Check is a real server's health check (keepalived's TCP_CHECK, HTTP_GET,
// SSL_GET, UDP_CHECK, MISC_CHECK). Type "" means none: always healthy.
type Check struct {
	Type     string        `json:"type,omitempty" yaml:"type"` // tcp, http, https, udp, misc
	Port     uint16        `json:"port,omitempty" yaml:"port"` // default: the real server's
	Interval time.Duration `json:"interval,omitempty" yaml:"interval"`
	Timeout  time.Duration `json:"timeout,omitempty" yaml:"timeout"`
	Retries  int           `json:"retries,omitempty" yaml:"retries"` // attempts per check
	Rise     int           `json:"rise,omitempty" yaml:"rise"`       // successes to come back
	Fall     int           `json:"fall,omitempty" yaml:"fall"`       // failures to go down
	Path     string        `json:"path,omitempty" yaml:"path"`       // http(s)
	Status   int           `json:"status,omitempty" yaml:"status"`   // http(s), default 200
	Command  string        `json:"command,omitempty" yaml:"command"` // misc: exit 0 is healthy
}

// CheckTypes are the health checks mbx runs.
var CheckTypes = map[string]bool{"": true, "tcp": true, "http": true, "https": true, "udp": true, "misc": true}

// AddrPort is the real server's address and port.
func (r Real) AddrPort() netip.AddrPort { return netip.AddrPortFrom(r.Addr, r.Port) }

// LocalAddr is a Full-NAT local address (LIP) and the device it lives on.
type LocalAddr struct {
	Addr netip.Addr `json:"addr"`
	Dev  string     `json:"dev"`
}

// Service is a virtual service with its real servers and LIP pool.
type Service struct {
	Key       ServiceKey `json:"key"`
	Scheduler string     `json:"scheduler"`
	// Persistence (ipvsadm -p) keeps a client on one real server for this
	// many seconds after its last new connection; 0 = none.
	Persistence int         `json:"persistence,omitempty"`
	Reals       []Real      `json:"reals"`
	LocalAddrs  []LocalAddr `json:"local_addrs"`
}

// IfAddr is an address mbx puts on an interface (mbx addr add).
type IfAddr struct {
	Prefix netip.Prefix `json:"prefix"`
	Dev    string       `json:"dev"`
}

// Timeouts are ipvsadm's --set values in seconds (0: keep the default):
// TCP applies to established connections, TCPFin to FIN_WAIT, UDP to UDP.
type Timeouts struct {
	TCP    int `json:"tcp" yaml:"tcp"`
	TCPFin int `json:"tcpfin" yaml:"tcpfin"`
	UDP    int `json:"udp" yaml:"udp"`
}

// Config is the whole desired state. Services are kept sorted by key so
// derived tables come out identical on every node.
type Config struct {
	Services  []*Service   `json:"services"`
	Addresses []IfAddr     `json:"addresses"`
	Timeouts  Timeouts     `json:"timeouts"`
	Maglev    MaglevParams `json:"maglev"`
}

// Clone returns a deep copy.
func (c *Config) Clone() *Config {
	n := &Config{Addresses: slices.Clone(c.Addresses), Timeouts: c.Timeouts, Maglev: c.Maglev}
	for _, s := range c.Services {
		cs := *s
		cs.Reals = slices.Clone(s.Reals)
		cs.LocalAddrs = slices.Clone(s.LocalAddrs)
		n.Services = append(n.Services, &cs)
	}
	return n
}

// Service returns the service with key k, or nil.
func (c *Config) Service(k ServiceKey) *Service {
	for _, s := range c.Services {
		if s.Key == k {
			return s
		}
	}
	return nil
}

// Validate checks the whole configuration; the first problem is returned.
func (c *Config) Validate() error {
	seen := map[ServiceKey]bool{}
	lips := map[netip.Addr]ServiceKey{}
	for _, s := range c.Services {
		if seen[s.Key] {
			return fmt.Errorf("duplicate service %s", s.Key)
		}
		seen[s.Key] = true
		if err := s.validate(); err != nil {
			return err
		}
		for _, la := range s.LocalAddrs {
			lips[la.Addr] = s.Key
		}
	}
	for _, s := range c.Services {
		if s.Key.IsMatch() {
			continue
		}
		if _, isLIP := lips[s.Key.Addr]; isLIP {
			return fmt.Errorf("service %s: address %s is also a local address (LIP)", s.Key, s.Key.Addr)
		}
	}
	if err := c.Maglev.validate(); err != nil {
		return err
	}
	for _, t := range []int{c.Timeouts.TCP, c.Timeouts.TCPFin, c.Timeouts.UDP} {
		if t < 0 || t > 31*24*3600 {
			return fmt.Errorf("timeout %d s out of range 0..%d", t, 31*24*3600)
		}
	}
	for _, a := range c.Addresses {
		if !a.Prefix.IsValid() || a.Dev == "" {
			return fmt.Errorf("address %s on %q: need ADDR/LEN and a device", a.Prefix, a.Dev)
		}
	}
	return nil
}

func (s *Service) validate() error {
	k := s.Key
	if k.IsMatch() {
		return s.validateMatch()
	}
	if k.Proto != TCP && k.Proto != UDP {
		return fmt.Errorf("service %s: protocol must be TCP or UDP", k)
	}
	if !k.Addr.IsValid() || k.Addr.IsUnspecified() {
		return fmt.Errorf("service %s: invalid virtual address", k)
	}
	if k.Addr.Is4In6() {
		return fmt.Errorf("service %s: write the IPv4-mapped address %s as IPv4", k, k.Addr)
	}
	if k.Port == 0 {
		return fmt.Errorf("service %s: port 0 (all ports) is not supported", k)
	}
	if _, ok := LookupScheduler(s.Scheduler); !ok {
		return fmt.Errorf("service %s: unknown scheduler %q (have %s)", k, s.Scheduler, strings.Join(Schedulers(), ", "))
	}
	if s.Persistence < 0 || s.Persistence > 31*24*3600 {
		return fmt.Errorf("service %s: persistence %d s out of range", k, s.Persistence)
	}
	if (s.Scheduler == "lc" || s.Scheduler == "wlc") && len(s.Reals) > LeastMax {
		return fmt.Errorf("service %s: %s supports at most %d real servers", k, s.Scheduler, LeastMax)
	}
	seen := map[netip.AddrPort]bool{}
	for _, r := range s.Reals {
		if seen[r.AddrPort()] {
			return fmt.Errorf("service %s: duplicate real server %s", k, r.AddrPort())
		}
		seen[r.AddrPort()] = true
		if err := r.validate(k); err != nil {
			return fmt.Errorf("service %s: real server %s: %w", k, r.AddrPort(), err)
		}
	}
	if err := s.validateFamilies(); err != nil {
		return err
	}
	lseen := map[netip.Addr]bool{}
	for _, la := range s.LocalAddrs {
		if lseen[la.Addr] {
			return fmt.Errorf("service %s: duplicate local address %s", k, la.Addr)
		}
		lseen[la.Addr] = true
		if !la.Addr.IsValid() || la.Addr.Is4() != s.RealFamily4() {
			return fmt.Errorf("service %s: local address %s has the wrong family (LIPs are in the real servers' family)", k, la.Addr)
		}
		if la.Dev == "" {
			return fmt.Errorf("service %s: local address %s needs a device (-F DEV)", k, la.Addr)
		}
	}
	return nil
}

// RealFamily4 reports whether the service's real servers (and so its LIPs)
// are IPv4: an IPv4 service's always are; an IPv6 service's are for NAT64.
func (s *Service) RealFamily4() bool {
	if len(s.Reals) > 0 {
		return s.Reals[0].Addr.Is4()
	}
	if len(s.LocalAddrs) > 0 {
		return s.LocalAddrs[0].Addr.Is4()
	}
	return s.Key.Addr.Is4()
}

// IsNAT64 reports whether s is an IPv6 service of IPv4 real servers.
func (s *Service) IsNAT64() bool { return !s.Key.IsMatch() && s.Key.Addr.Is6() && s.RealFamily4() }

// validateFamilies checks what IPv6 services may do: Full-NAT, DR and
// tunnel to IPv6 real servers, or NAT64 Full-NAT to IPv4 ones with IPv4
// LIPs; one family of real servers per service (it has one LIP pool).
func (s *Service) validateFamilies() error {
	k := s.Key
	if k.Addr.Is4() {
		return nil
	}
	for _, r := range s.Reals {
		if r.Addr.Is4() != s.RealFamily4() {
			return fmt.Errorf("service %s: real servers of both families (%s and %s): one family per service", k, s.Reals[0].Addr, r.Addr)
		}
		if r.Forward == Masquerade {
			return fmt.Errorf("service %s: real server %s: NAT (-m) is IPv4 only; use -b (Full-NAT), -g or -i", k, r.AddrPort())
		}
	}
	if s.IsNAT64() {
		for _, la := range s.LocalAddrs {
			if !la.Addr.Is4() {
				return fmt.Errorf("service %s: NAT64 (IPv6 service, IPv4 real servers) needs IPv4 LIPs, not %s", k, la.Addr)
			}
		}
	}
	return nil
}

func (r Real) validate(k ServiceKey) error {
	if !r.Addr.IsValid() || r.Addr.IsUnspecified() {
		return errors.New("invalid address")
	}
	if r.Addr.Is4() != k.Addr.Is4() && (k.Addr.Is4() || r.Forward != FullNAT) {
		return errors.New("address family differs from the service's (only Full-NAT (-b) of an IPv6 service may reach IPv4 real servers: NAT64)")
	}
	if r.Weight < 0 || r.Weight > 65535 {
		return fmt.Errorf("weight %d out of range 0..65535", r.Weight)
	}
	if !CheckTypes[r.Check.Type] {
		return fmt.Errorf("unknown health check %q (tcp, http, https, udp, misc)", r.Check.Type)
	}
	if r.Check.Type == "misc" && r.Check.Command == "" {
		return errors.New("misc health check without a command")
	}
	if r.Check.Interval < 0 || r.Check.Timeout < 0 || r.Check.Retries < 0 || r.Check.Rise < 0 || r.Check.Fall < 0 {
		return errors.New("negative health check setting")
	}
	switch {
	case r.Forward == "":
		return errors.New("no forwarding method")
	case r.Forward == SNAT && !k.IsMatch():
		return errors.New("SNAT (-J) needs a match service (-H MATCH), not a virtual address")
	case r.Forward != SNAT && k.IsMatch():
		return fmt.Errorf("a match service (-H) takes SNAT real servers (-J), not %s", r.Forward.ForwardName())
	case !slices.Contains(Forwards, r.Forward):
		return fmt.Errorf("unknown forwarding method %q (fnat, dr, tunnel, nat)", r.Forward)
	case r.Forward.Direct() && r.Port != 0 && r.Port != k.Port:
		return fmt.Errorf("%s keeps the destination port: real server port %d differs from the service's %d", r.Forward.ForwardName(), r.Port, k.Port)
	}
	return nil
}

func (c *Config) sortServices() {
	slices.SortFunc(c.Services, func(a, b *Service) int { return a.Key.compare(b.Key) })
}

// Effective returns base with t's non-zero values applied, mapped onto
// connection states as IPVS does.
func (t Timeouts) Effective(base flow.Timeouts) flow.Timeouts {
	set := func(st flow.State, sec int) {
		if sec > 0 {
			base[st] = time.Duration(sec) * time.Second
		}
	}
	set(flow.StateEstablished, t.TCP)
	set(flow.StateFinWait, t.TCPFin)
	set(flow.StateUDP, t.UDP)
	return base
}

// Seconds reads the three ipvsadm timeouts back from per-state timeouts.
func Seconds(f flow.Timeouts) Timeouts {
	return Timeouts{TCP: int(f[flow.StateEstablished] / time.Second), TCPFin: int(f[flow.StateFinWait] / time.Second), UDP: int(f[flow.StateUDP] / time.Second)}
}

// validateMatch checks an SNAT match service: its real servers are the WAN
// addresses (port 0) connections leave from.
func (s *Service) validateMatch() error {
	m, err := ParseMatch(s.Key.Match)
	if err != nil {
		return err
	}
	if m.String() != s.Key.Match || m.Proto != s.Key.Proto {
		return fmt.Errorf("service %s: not a canonical match", s.Key)
	}
	if _, ok := LookupScheduler(s.Scheduler); !ok {
		return fmt.Errorf("service %s: unknown scheduler %q (have %s)", s.Key, s.Scheduler, strings.Join(Schedulers(), ", "))
	}
	if s.Persistence != 0 {
		return fmt.Errorf("service %s: persistence does not apply to SNAT", s.Key)
	}
	if len(s.LocalAddrs) > 0 {
		return fmt.Errorf("service %s: SNAT's addresses are its real servers (-r WAN_IP:0 -J), not LIPs", s.Key)
	}
	seen := map[netip.Addr]bool{}
	for _, r := range s.Reals {
		if r.Forward != SNAT {
			return fmt.Errorf("service %s: a match service takes SNAT real servers (-J), not %s", s.Key, r.Forward.ForwardName())
		}
		if !r.Addr.Is4() || r.Port != 0 {
			return fmt.Errorf("service %s: SNAT address %s: IPv4 with port 0 (-r WAN_IP:0)", s.Key, r.AddrPort())
		}
		if seen[r.Addr] {
			return fmt.Errorf("service %s: duplicate SNAT address %s", s.Key, r.Addr)
		}
		seen[r.Addr] = true
		if r.Weight < 0 || r.Weight > 65535 {
			return fmt.Errorf("service %s: weight %d out of range 0..65535", s.Key, r.Weight)
		}
	}
	return nil
}

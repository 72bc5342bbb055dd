package control

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/lb"
)

// The YAML configuration file (mbx run --config FILE):
//
//	timeouts: {tcp: 900, tcpfin: 120, udp: 300}   # as ipvsadm --set
//	maglev: {size: 65537, seed: 0}                 # mh/sh/dh tables; equal on every node
//	addresses:
//	  - {addr: 198.18.0.100/32, dev: wan0}
//	services:
//	  - proto: tcp                 # tcp (default) or udp
//	    vip: 198.18.0.100:80
//	    scheduler: rr
//	    reals:
//	      - {addr: 198.18.1.2:80, weight: 1, forward: fnat,
//	         check: {type: tcp, interval: 2s, timeout: 1s, fall: 3, rise: 2},
//	         inhibit_on_failure: true}
//	    laddrs:
//	      - {addr: 198.18.1.200, dev: lan0}
//	  - match: proto=tcp,src-range=198.18.1.0-198.18.1.254,oif=wan0   # SNAT
//	    scheduler: rr
//	    reals: [{addr: "198.18.0.1:0"}]
//	bricks:                        # docs/bricks.md
//	  engines: [{name: e0, iface: tap0, link: lb0, start: true}]
//	  bricks: [{name: lb0, type: loadbalancer, hash: 4tuple, outputs: ["tap0}0", "tap0}1"]}]
//	dpdk:                          # mbx run --backend dpdk (docs/dpdk.md); read at start
//	  eal: "-l 0 --no-huge --no-pci -m 512 --vdev=net_af_xdp0,iface=wan0"
//	  ports: [net_af_xdp0=198.18.0.1/24]
//	  routes: [198.18.5.0/24=198.18.1.254]
//	  taps: [net_af_xdp0=mbxk0]
type fileConfig struct {
	Timeouts  *lb.Timeouts     `yaml:"timeouts"`
	Maglev    *lb.MaglevParams `yaml:"maglev"`
	Addresses []fileAddr       `yaml:"addresses"`
	Services  []fileService    `yaml:"services"`
	Bricks    *bricks.Model    `yaml:"bricks"`
	DPDK      *DPDKSection     `yaml:"dpdk"`
}

// DPDKSection is the YAML file's dpdk section: the flags of the same names
// (--eal, --port, --route, --tap), which take precedence when given. The
// data plane is set up once: a reload does not change it.
type DPDKSection struct {
	EAL    string   `yaml:"eal"`
	Ports  []string `yaml:"ports"`
	Routes []string `yaml:"routes"`
	Taps   []string `yaml:"taps"`
}

// LoadDPDKFile reads the dpdk section of a YAML configuration (nil when it
// has none).
func LoadDPDKFile(path string) (*DPDKSection, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var fc struct {
		DPDK *DPDKSection `yaml:"dpdk"`
	}
	if err := yaml.Unmarshal(data, &fc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return fc.DPDK, nil
}

type fileAddr struct {
	Addr string `yaml:"addr"`
	Dev  string `yaml:"dev"`
}

type fileService struct {
	Persistence int         `yaml:"persistence"`
	Proto       string      `yaml:"proto"`
	VIP         string      `yaml:"vip"`
	Match       string      `yaml:"match"` // SNAT match service instead of vip (DPVS's -H)
	Scheduler   string      `yaml:"scheduler"`
	Reals       []fileReal  `yaml:"reals"`
	Laddrs      []fileLaddr `yaml:"laddrs"`
}

type fileReal struct {
	Addr             string   `yaml:"addr"`
	Weight           *int     `yaml:"weight"`
	Forward          string   `yaml:"forward"`
	Check            lb.Check `yaml:"check"`
	InhibitOnFailure bool     `yaml:"inhibit_on_failure"`
}

type fileLaddr struct {
	Addr string `yaml:"addr"`
	Dev  string `yaml:"dev"`
}

// nodeLine finds the line of a path like ("services", 2, "reals", 0) in a
// decoded document; 0 when it is not there.
func nodeLine(n *yaml.Node, path ...any) int {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for _, p := range path {
		switch k := p.(type) {
		case string:
			if n.Kind != yaml.MappingNode {
				return n.Line
			}
			found := false
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == k {
					n, found = n.Content[i+1], true
					break
				}
			}
			if !found {
				return n.Line
			}
		case int:
			if n.Kind != yaml.SequenceNode || k >= len(n.Content) {
				return n.Line
			}
			n = n.Content[k]
		}
	}
	return n.Line
}

// LoadConfigFile reads and validates a YAML configuration; errors name
// FILE:LINE. The returned ops build the configuration from empty.
func LoadConfigFile(path string) ([]lb.Op, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ops, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s:%w", path, err)
	}
	return ops, nil
}

// LoadBricksFile reads the bricks section of a YAML configuration (nil when
// it has none). The model is checked by the daemon, against the machine.
func LoadBricksFile(path string) (*bricks.Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var fc struct {
		Bricks *bricks.Model `yaml:"bricks"`
	}
	if err := yaml.Unmarshal(data, &fc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return fc.Bricks, nil
}

type lineError struct {
	line int
	err  error
}

func (e lineError) Error() string { return fmt.Sprintf("%d: %v", e.line, e.err) }

// ParseConfig parses YAML configuration text; errors start with "LINE: ".
func ParseConfig(data []byte) ([]lb.Op, error) {
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && err.Error() != "EOF" {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
		if rest, ok := strings.CutPrefix(msg, "line "); ok {
			return nil, fmt.Errorf("%s", rest)
		}
		return nil, fmt.Errorf("0: %s", msg)
	}
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)

	var ops []lb.Op
	cfg := &lb.Config{}
	apply := func(line int, op lb.Op) error {
		if err := cfg.Apply(op); err != nil {
			return lineError{line, err}
		}
		ops = append(ops, op)
		return nil
	}
	if fc.Timeouts != nil {
		if err := apply(nodeLine(&root, "timeouts"), lb.Op{Kind: lb.OpSetTimeout, Timeouts: *fc.Timeouts}); err != nil {
			return nil, err
		}
		if err := cfg.Validate(); err != nil {
			return nil, lineError{nodeLine(&root, "timeouts"), err}
		}
	}
	if fc.Maglev != nil {
		cfg.Maglev = *fc.Maglev
		if err := cfg.Validate(); err != nil {
			return nil, lineError{nodeLine(&root, "maglev"), err}
		}
		ops = append(ops, lb.Op{Kind: lb.OpSetMaglev, Maglev: *fc.Maglev})
	}
	for i, a := range fc.Addresses {
		line := nodeLine(&root, "addresses", i)
		p, err := netip.ParsePrefix(a.Addr)
		if err != nil {
			return nil, lineError{line, fmt.Errorf("malformed address %q (want ADDR/LEN)", a.Addr)}
		}
		if a.Dev == "" {
			return nil, lineError{line, fmt.Errorf("address %s: no dev", a.Addr)}
		}
		if err := apply(line, lb.Op{Kind: lb.OpAddAddr, Addr: lb.IfAddr{Prefix: p, Dev: a.Dev}}); err != nil {
			return nil, err
		}
	}
	svcLine := map[lb.ServiceKey]int{}
	for i, s := range fc.Services {
		line := nodeLine(&root, "services", i)
		proto := lb.TCP
		switch strings.ToLower(s.Proto) {
		case "", "tcp":
		case "udp":
			proto = lb.UDP
		default:
			return nil, lineError{line, fmt.Errorf("unknown protocol %q (tcp or udp)", s.Proto)}
		}
		var key lb.ServiceKey
		var port uint16
		if s.Match != "" {
			if s.VIP != "" {
				return nil, lineError{line, errors.New("give vip or match, not both")}
			}
			m, err := lb.ParseMatch(s.Match)
			if err != nil {
				return nil, lineError{nodeLine(&root, "services", i, "match"), err}
			}
			key = lb.MatchKey(m)
		} else {
			addr, p, err := lb.ParseAddrPort(s.VIP, -1)
			if err != nil {
				return nil, lineError{nodeLine(&root, "services", i, "vip"), err}
			}
			key, port = lb.ServiceKey{Proto: proto, Addr: addr, Port: p}, p
		}
		svcLine[key] = line
		if s.Scheduler != "" {
			if _, ok := lb.LookupScheduler(s.Scheduler); !ok {
				return nil, lineError{nodeLine(&root, "services", i, "scheduler"), fmt.Errorf("unknown scheduler %q (have %s)", s.Scheduler, strings.Join(lb.Schedulers(), ", "))}
			}
		}
		if err := apply(line, lb.Op{Kind: lb.OpAddService, Service: key, Scheduler: s.Scheduler, Persistence: s.Persistence}); err != nil {
			return nil, err
		}
		for j, r := range s.Reals {
			rl := nodeLine(&root, "services", i, "reals", j)
			a, p, err := lb.ParseAddrPort(r.Addr, int(port))
			if err != nil {
				return nil, lineError{rl, err}
			}
			w := 1
			if r.Weight != nil {
				w = *r.Weight
			}
			fwd := lb.Forward(strings.ToLower(r.Forward))
			switch {
			case fwd == "" && key.IsMatch():
				fwd = lb.SNAT
			case fwd == "":
				fwd = lb.FullNAT
			}
			real := lb.Real{Addr: a, Port: p, Weight: w, Forward: fwd, Check: r.Check, InhibitOnFailure: r.InhibitOnFailure}
			if err := apply(rl, lb.Op{Kind: lb.OpAddReal, Service: key, Real: real}); err != nil {
				return nil, err
			}
			if err := (&lb.Config{Services: []*lb.Service{{Key: key, Scheduler: "rr", Reals: []lb.Real{real}}}}).Validate(); err != nil {
				return nil, lineError{rl, err}
			}
		}
		for j, la := range s.Laddrs {
			ll := nodeLine(&root, "services", i, "laddrs", j)
			a, err := netip.ParseAddr(la.Addr)
			if err != nil {
				return nil, lineError{ll, fmt.Errorf("malformed local address %q", la.Addr)}
			}
			if err := apply(ll, lb.Op{Kind: lb.OpAddLaddr, Service: key, Laddr: lb.LocalAddr{Addr: a, Dev: la.Dev}}); err != nil {
				return nil, err
			}
		}
	}
	for _, s := range cfg.Services {
		if err := (&lb.Config{Services: []*lb.Service{s}}).Validate(); err != nil {
			return nil, lineError{svcLine[s.Key], err}
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, lineError{0, err}
	}
	return ops, nil
}

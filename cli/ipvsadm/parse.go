// Package ipvsadm parses ipvsadm command lines (the subset mbx implements,
// with DPVS's --add-laddr extensions) into lb.Ops and listing requests, and
// formats listings exactly as ipvsadm prints them. It has no I/O of its own.
package ipvsadm

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mbx-net/mbx/lb"
)

// Action is what a command line asks for.
type Action int

const (
	ActionOps      Action = iota // change the configuration
	ActionList                   // -L/-l
	ActionSave                   // -S
	ActionRestore                // -R
	ActionGetLaddr               // -G
)

// Command is a parsed ipvsadm command line.
type Command struct {
	Action  Action
	Ops     []lb.Op
	Service *lb.ServiceKey // -L/-G restricted to one service
	Numeric bool
	Conns   bool // -c
	Stats   bool // --stats
	Exact   bool // -x/--exact
	Timeout bool // -L --timeout
}

type optSpec struct {
	long   string
	hasArg bool
}

var shortOpts = map[byte]optSpec{
	'A': {"add-service", false}, 'E': {"edit-service", false}, 'D': {"delete-service", false},
	'C': {"clear", false}, 'R': {"restore", false}, 'S': {"save", false},
	'a': {"add-server", false}, 'e': {"edit-server", false}, 'd': {"delete-server", false},
	'L': {"list", false}, 'l': {"list", false}, 'Z': {"zero", false},
	'P': {"add-laddr", false}, 'Q': {"del-laddr", false}, 'G': {"get-laddr", false},
	't': {"tcp-service", true}, 'u': {"udp-service", true}, 's': {"scheduler", true},
	'p': {"persistent", true}, 'r': {"real-server", true}, 'w': {"weight", true},
	'b': {"fullnat", false}, 'g': {"gatewaying", false}, 'i': {"ipip", false},
	'm': {"masquerading", false}, 'J': {"snat", false}, 'z': {"laddr", true},
	'F': {"ifname", true}, 'n': {"numeric", false}, 'c': {"connection", false},
	'x': {"exact", false}, 'H': {"match", true}, 'f': {"fwmark-service", true},
}

var longOpts = func() map[string]optSpec {
	m := map[string]optSpec{"stats": {"stats", false}, "rate": {"rate", false}, "timeout": {"timeout", false}, "set": {"set", false}}
	for _, o := range shortOpts {
		m[o.long] = o
	}
	return m
}()

type opt struct{ name, arg string }

// getopt splits args the way ipvsadm's popt/getopt does: bundled short
// flags (-lnc), attached or separate arguments (-t1.2.3.4:80, -t 1.2.3.4:80),
// --long and --long=value.
func getopt(args []string) ([]opt, error) {
	var out []opt
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--set":
			// ipvsadm --set TCP TCPFIN UDP: three values.
			if i+3 >= len(args) {
				return nil, errors.New("--set needs three values: TCP TCPFIN UDP (seconds)")
			}
			out = append(out, opt{"set", strings.Join(args[i+1:i+4], " ")})
			i += 3
		case a == "-p" || a == "--persistent":
			// ipvsadm's timeout after -p is optional (default 360 s).
			if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				out = append(out, opt{"persistent", args[i+1]})
				i++
			} else {
				out = append(out, opt{"persistent", "360"})
			}
		case strings.HasPrefix(a, "--") && len(a) > 2:
			name, val, hasVal := strings.Cut(a[2:], "=")
			spec, ok := longOpts[name]
			if !ok {
				return nil, fmt.Errorf("unknown option --%s", name)
			}
			if spec.hasArg && !hasVal {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("option --%s needs an argument", name)
				}
				i++
				val = args[i]
			} else if !spec.hasArg && hasVal {
				return nil, fmt.Errorf("option --%s takes no argument", name)
			}
			out = append(out, opt{spec.long, val})
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j := 1; j < len(a); j++ {
				spec, ok := shortOpts[a[j]]
				if !ok {
					return nil, fmt.Errorf("unknown option -%c", a[j])
				}
				if !spec.hasArg {
					out = append(out, opt{spec.long, ""})
					continue
				}
				val := a[j+1:]
				if val == "" {
					if i+1 >= len(args) {
						return nil, fmt.Errorf("option -%c needs an argument", a[j])
					}
					i++
					val = args[i]
				}
				out = append(out, opt{spec.long, val})
				break
			}
		default:
			return nil, fmt.Errorf("unexpected argument %q", a)
		}
	}
	return out, nil
}

var commands = map[string]bool{
	"add-service": true, "edit-service": true, "delete-service": true, "clear": true,
	"restore": true, "save": true, "add-server": true, "edit-server": true,
	"delete-server": true, "list": true, "zero": true, "add-laddr": true,
	"del-laddr": true, "get-laddr": true, "set": true,
}

// Parse parses one ipvsadm command line (without the program name).
func Parse(args []string) (*Command, error) {
	opts, err := getopt(args)
	if err != nil {
		return nil, err
	}
	var (
		setArg  string
		persist = -1
		cmd     string
		svc     *lb.ServiceKey
		sched   string
		real    string
		weight  = -1
		fwd     lb.Forward
		laddr   string
		dev     string
		c       = &Command{}
	)
	setFwd := func(f lb.Forward, flag string) error {
		if fwd != "" && fwd != f {
			return errors.New("only one forwarding method (-b, -g, -i, -m, -J) may be given")
		}
		fwd = f
		return nil
	}
	for _, o := range opts {
		if commands[o.name] {
			if cmd != "" && cmd != o.name {
				return nil, fmt.Errorf("options --%s and --%s are two commands; give one", cmd, o.name)
			}
			cmd = o.name
			if o.name == "set" {
				setArg = o.arg
			}
			continue
		}
		switch o.name {
		case "tcp-service", "udp-service":
			a, p, err := lb.ParseAddrPort(o.arg, -1)
			if err != nil {
				return nil, err
			}
			proto := lb.TCP
			if o.name == "udp-service" {
				proto = lb.UDP
			}
			svc = &lb.ServiceKey{Proto: proto, Addr: a, Port: p}
		case "scheduler":
			sched = o.arg
		case "real-server":
			real = o.arg
		case "weight":
			w, err := strconv.Atoi(o.arg)
			if err != nil || w < 0 || w > 65535 {
				return nil, fmt.Errorf("illegal weight %q (0..65535)", o.arg)
			}
			weight = w
		case "fullnat":
			err = setFwd(lb.FullNAT, "-b")
		case "gatewaying":
			err = setFwd(lb.DirectRoute, "-g")
		case "ipip":
			err = setFwd(lb.Tunnel, "-i")
		case "masquerading":
			err = setFwd(lb.Masquerade, "-m")
		case "snat":
			err = setFwd("snat", "-J")
		case "laddr":
			laddr = o.arg
		case "ifname":
			dev = o.arg
		case "numeric":
			c.Numeric = true
		case "connection":
			c.Conns = true
		case "stats":
			c.Stats = true
		case "exact":
			c.Exact = true
		case "timeout":
			c.Timeout = true
		case "persistent":
			n, err := strconv.Atoi(o.arg)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("illegal persistence timeout %q (seconds)", o.arg)
			}
			persist = n
		case "match":
			m, err := lb.ParseMatch(o.arg)
			if err != nil {
				return nil, err
			}
			k := lb.MatchKey(m)
			svc = &k
		case "fwmark-service":
			return nil, errors.New("firewall-mark services (-f) are not supported")
		case "rate":
			return nil, errors.New("--rate is not supported")
		}
		if err != nil {
			return nil, err
		}
	}
	needSvc := func() error {
		if svc == nil {
			return errors.New("no service given (-t VIP:PORT or -u VIP:PORT)")
		}
		return nil
	}
	realOf := func(needWeight bool) (lb.Real, error) {
		if real == "" {
			return lb.Real{}, errors.New("no real server given (-r IP[:PORT])")
		}
		a, p, err := lb.ParseAddrPort(real, int(svc.Port))
		if err != nil {
			return lb.Real{}, err
		}
		r := lb.Real{Addr: a, Port: p, Weight: weight, Forward: fwd}
		if r.Weight < 0 && needWeight {
			r.Weight = 1
		}
		if r.Forward == "" {
			// ipvsadm's default is direct routing (-g).
			r.Forward = lb.DirectRoute // ipvsadm's default
			if svc.IsMatch() {
				r.Forward = lb.SNAT
			}
		}
		return r, nil
	}
	switch cmd {
	case "":
		return nil, errors.New("no command given (e.g. -A, -a, -L)")
	case "list":
		c.Action, c.Service = ActionList, svc
	case "save":
		c.Action, c.Service = ActionSave, svc
	case "restore":
		c.Action = ActionRestore
	case "get-laddr":
		c.Action, c.Service = ActionGetLaddr, svc
	case "zero":
		return nil, errors.New("-Z (zero counters) is not supported yet")
	case "clear":
		c.Ops = []lb.Op{{Kind: lb.OpClear}}
	case "set":
		var v [3]int
		for i, f := range strings.Fields(setArg) {
			n, err := strconv.Atoi(f)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("--set: bad timeout %q (seconds, 0 keeps the current value)", f)
			}
			v[i] = n
		}
		c.Ops = []lb.Op{{Kind: lb.OpSetTimeout, Timeouts: lb.Timeouts{TCP: v[0], TCPFin: v[1], UDP: v[2]}}}
	case "add-service", "edit-service", "delete-service":
		if err := needSvc(); err != nil {
			return nil, err
		}
		if sched != "" {
			if _, ok := lb.LookupScheduler(sched); !ok {
				return nil, fmt.Errorf("unknown scheduler %q (have %s)", sched, strings.Join(lb.Schedulers(), ", "))
			}
		}
		kind := map[string]lb.OpKind{"add-service": lb.OpAddService, "edit-service": lb.OpEditService, "delete-service": lb.OpDelService}[cmd]
		p := persist
		if kind == lb.OpAddService && p < 0 {
			p = 0
		}
		c.Ops = []lb.Op{{Kind: kind, Service: *svc, Scheduler: sched, Persistence: p}}
	case "add-server", "edit-server", "delete-server":
		if err := needSvc(); err != nil {
			return nil, err
		}
		var r lb.Real
		var err error
		if cmd == "delete-server" {
			if real == "" {
				return nil, errors.New("no real server given (-r IP[:PORT])")
			}
			a, p, perr := lb.ParseAddrPort(real, int(svc.Port))
			r, err = lb.Real{Addr: a, Port: p}, perr
		} else {
			r, err = realOf(cmd == "add-server")
		}
		if err != nil {
			return nil, err
		}
		kind := map[string]lb.OpKind{"add-server": lb.OpAddReal, "edit-server": lb.OpEditReal, "delete-server": lb.OpDelReal}[cmd]
		c.Ops = []lb.Op{{Kind: kind, Service: *svc, Real: r}}
		if cmd == "edit-server" && weight < 0 {
			c.Ops[0].Real.Weight = -1 // keep the current weight (resolved by the daemon)
		}
	case "add-laddr", "del-laddr":
		if err := needSvc(); err != nil {
			return nil, err
		}
		if laddr == "" {
			return nil, errors.New("no local address given (-z LIP)")
		}
		a, err := netip.ParseAddr(laddr)
		if err != nil {
			return nil, fmt.Errorf("malformed local address %q", laddr)
		}
		if cmd == "add-laddr" && dev == "" {
			return nil, errors.New("no device given for the local address (-F DEV)")
		}
		kind := lb.OpAddLaddr
		if cmd == "del-laddr" {
			kind = lb.OpDelLaddr
		}
		c.Ops = []lb.Op{{Kind: kind, Service: *svc, Laddr: lb.LocalAddr{Addr: a.Unmap(), Dev: dev}}}
	}
	return c, nil
}

// ParseLines parses -R input: one command line per line; blank lines and
// '#' comments are skipped. Only configuration commands are allowed.
func ParseLines(text string) ([]lb.Op, error) {
	var ops []lb.Op
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if fields[0] == "ipvsadm" {
			fields = fields[1:]
		}
		c, err := Parse(fields)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		if c.Action != ActionOps {
			return nil, fmt.Errorf("line %d: only configuration commands can be restored", n+1)
		}
		ops = append(ops, c.Ops...)
	}
	return ops, nil
}

// Package keepalived reads the load-balancing parts of a keepalived.conf
// (the DPVS tutorial's dialect: virtual_server, virtual_server_group,
// real_server, TCP_CHECK/HTTP_GET/SSL_GET/UDP_CHECK/MISC_CHECK,
// local_address_group, laddr_group_name, lb_algo, lb_kind, protocol,
// delay_loop, inhibit_on_failure) into lb.Ops, so an operator's file works
// unchanged. Nothing is ignored silently: blocks outside load balancing
// (global_defs, vrrp_*) are reported as warnings with file:line; load
// balancing that mbx cannot honour yet is an error with file:line.
package keepalived

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mbx-net/mbx/lb"
)

// node is one statement: a keyword, its arguments, and a block if any.
type node struct {
	key      string
	args     []string
	line     int
	children []*node
}

// Result is a parsed file.
type Result struct {
	Ops      []lb.Op
	Warnings []string // "file:line: ..." for what mbx does not use
}

type parseError struct {
	file string
	line int
	msg  string
}

func (e *parseError) Error() string { return fmt.Sprintf("%s:%d: %s", e.file, e.line, e.msg) }

// Load parses the file at path.
func Load(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, string(b))
}

type token struct {
	text string
	line int
}

func tokenize(text string) [][]token {
	var lines [][]token
	sc := bufio.NewScanner(strings.NewReader(text))
	n := 0
	for sc.Scan() {
		n++
		l := sc.Text()
		if i := strings.IndexAny(l, "!#"); i >= 0 {
			l = l[:i]
		}
		l = strings.ReplaceAll(strings.ReplaceAll(l, "{", " { "), "}", " } ")
		var toks []token
		inQuote := false
		var cur strings.Builder
		flush := func() {
			if cur.Len() > 0 {
				toks = append(toks, token{cur.String(), n})
				cur.Reset()
			}
		}
		for _, r := range l {
			switch {
			case r == '"':
				inQuote = !inQuote
			case (r == ' ' || r == '\t') && !inQuote:
				flush()
			default:
				cur.WriteRune(r)
			}
		}
		flush()
		if len(toks) > 0 {
			lines = append(lines, toks)
		}
	}
	return lines
}

// parseTree builds statements from lines: "key args... {" opens a block,
// "}" closes it.
func parseTree(file string, lines [][]token) ([]*node, error) {
	root := &node{}
	stack := []*node{root}
	for _, toks := range lines {
		for len(toks) > 0 {
			top := stack[len(stack)-1]
			if toks[0].text == "}" {
				if len(stack) == 1 {
					return nil, &parseError{file, toks[0].line, "unexpected }"}
				}
				stack = stack[:len(stack)-1]
				toks = toks[1:]
				continue
			}
			n := &node{key: toks[0].text, line: toks[0].line}
			toks = toks[1:]
			for len(toks) > 0 && toks[0].text != "{" && toks[0].text != "}" {
				n.args = append(n.args, toks[0].text)
				toks = toks[1:]
			}
			top.children = append(top.children, n)
			if len(toks) > 0 && toks[0].text == "{" {
				stack = append(stack, n)
				toks = toks[1:]
			}
		}
	}
	if len(stack) != 1 {
		return nil, &parseError{file, stack[len(stack)-1].line, fmt.Sprintf("block %q is not closed", stack[len(stack)-1].key)}
	}
	return root.children, nil
}

type parser struct {
	file   string
	res    *Result
	laddrs map[string][]lb.LocalAddr
	groups map[string][]lb.ServiceKey
}

func (p *parser) errf(n *node, f string, a ...any) error {
	return &parseError{p.file, n.line, fmt.Sprintf(f, a...)}
}

func (p *parser) warn(n *node, f string, a ...any) {
	p.res.Warnings = append(p.res.Warnings, fmt.Sprintf("%s:%d: %s", p.file, n.line, fmt.Sprintf(f, a...)))
}

// Parse parses keepalived configuration text; file names errors.
func Parse(file, text string) (*Result, error) {
	tree, err := parseTree(file, tokenize(text))
	if err != nil {
		return nil, err
	}
	p := &parser{file: file, res: &Result{}, laddrs: map[string][]lb.LocalAddr{}, groups: map[string][]lb.ServiceKey{}}
	// Groups first: virtual servers may refer to groups defined later.
	for _, n := range tree {
		var err error
		switch n.key {
		case "local_address_group":
			err = p.laddrGroup(n)
		case "virtual_server_group":
			err = p.vsGroup(n)
		}
		if err != nil {
			return nil, err
		}
	}
	for _, n := range tree {
		switch n.key {
		case "local_address_group", "virtual_server_group":
		case "virtual_server":
			if err := p.virtualServer(n); err != nil {
				return nil, err
			}
		case "global_defs", "vrrp_instance", "vrrp_sync_group", "vrrp_script", "static_ipaddress", "static_routes":
			p.warn(n, "%s is not used by mbx (load balancing only)", n.key)
		default:
			return nil, p.errf(n, "unknown keyword %q", n.key)
		}
	}
	cfg := &lb.Config{}
	if _, err := cfg.Do(p.res.Ops); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return p.res, nil
}

func (p *parser) laddrGroup(n *node) error {
	if len(n.args) != 1 {
		return p.errf(n, "local_address_group needs a name")
	}
	for _, c := range n.children {
		a, err := netip.ParseAddr(c.key)
		if err != nil || len(c.args) != 1 {
			return p.errf(c, "want \"LIP DEVICE\", got %q", strings.Join(append([]string{c.key}, c.args...), " "))
		}
		p.laddrs[n.args[0]] = append(p.laddrs[n.args[0]], lb.LocalAddr{Addr: a, Dev: c.args[0]})
	}
	return nil
}

func (p *parser) vsGroup(n *node) error {
	if len(n.args) != 1 {
		return p.errf(n, "virtual_server_group needs a name")
	}
	for _, c := range n.children {
		a, err := netip.ParseAddr(c.key)
		if err != nil || len(c.args) != 1 {
			return p.errf(c, "want \"VIP PORT\" (address ranges are not supported), got %q", strings.Join(append([]string{c.key}, c.args...), " "))
		}
		port, err := strconv.ParseUint(c.args[0], 10, 16)
		if err != nil {
			return p.errf(c, "bad port %q", c.args[0])
		}
		p.groups[n.args[0]] = append(p.groups[n.args[0]], lb.ServiceKey{Addr: a, Port: uint16(port)})
	}
	return nil
}

var algos = map[string]string{"rr": "rr", "wrr": "wrr", "lc": "lc", "wlc": "wlc", "sh": "sh", "dh": "dh", "mh": "mh"}

func (p *parser) virtualServer(n *node) error {
	var keys []lb.ServiceKey
	isMatch := false
	switch {
	case len(n.args) == 2 && n.args[0] == "match":
		// DPVS's SNAT service: the match is built from src-range, dst-range,
		// iif and oif below; the key is made once the block is read.
		isMatch = true
	case len(n.args) == 2 && n.args[0] == "group":
		g, ok := p.groups[n.args[1]]
		if !ok {
			return p.errf(n, "virtual_server_group %q is not defined", n.args[1])
		}
		keys = append(keys, g...)
	case len(n.args) == 2:
		a, err := netip.ParseAddr(n.args[0])
		if err != nil {
			return p.errf(n, "bad virtual server address %q", n.args[0])
		}
		port, err := strconv.ParseUint(n.args[1], 10, 16)
		if err != nil {
			return p.errf(n, "bad port %q", n.args[1])
		}
		keys = append(keys, lb.ServiceKey{Addr: a, Port: uint16(port)})
	default:
		return p.errf(n, "want \"virtual_server VIP PORT\" or \"virtual_server group NAME\"")
	}
	sched, proto, persist, kind := "", lb.TCP, 0, lb.FullNAT
	var matchParts []string
	matchNode := n
	interval := time.Duration(0)
	var laddrs []lb.LocalAddr
	var reals []*node
	for _, c := range n.children {
		switch c.key {
		case "delay_loop":
			d, err := seconds(c)
			if err != nil {
				return p.errf(c, "%v", err)
			}
			interval = d
		case "lb_algo":
			if len(c.args) != 1 {
				return p.errf(c, "lb_algo needs one value")
			}
			s, ok := algos[c.args[0]]
			if !ok {
				return p.errf(c, "lb_algo %s is not supported (rr, wrr, lc, wlc, sh, dh, mh)", c.args[0])
			}
			sched = s
		case "lb_kind":
			k, ok := lbKinds[strings.ToUpper(strings.Join(c.args, " "))]
			if !ok {
				return p.errf(c, "lb_kind %s is not supported (FNAT, DR, TUN, NAT)", strings.Join(c.args, " "))
			}
			kind = k
		case "protocol":
			switch strings.ToUpper(strings.Join(c.args, "")) {
			case "TCP":
				proto = lb.TCP
			case "UDP":
				proto = lb.UDP
			case "ICMP":
				if !isMatch {
					return p.errf(c, "protocol ICMP is for SNAT match services (virtual_server match NAME)")
				}
				proto = lb.ICMP
			default:
				return p.errf(c, "protocol %s is not supported (TCP, UDP; ICMP for SNAT)", strings.Join(c.args, " "))
			}
		case "src-range", "dst-range", "iif", "oif":
			if !isMatch {
				return p.errf(c, "%s belongs to an SNAT match service (virtual_server match NAME)", c.key)
			}
			if len(c.args) != 1 {
				return p.errf(c, "%s needs one value", c.key)
			}
			matchParts = append(matchParts, c.key+"="+c.args[0])
			matchNode = c
		case "laddr_group_name":
			g, ok := p.laddrs[strings.Join(c.args, "")]
			if !ok {
				return p.errf(c, "local_address_group %q is not defined", strings.Join(c.args, ""))
			}
			laddrs = g
		case "real_server":
			reals = append(reals, c)
		case "persistence_timeout":
			n, err := strconv.Atoi(strings.Join(c.args, ""))
			if err != nil || n < 0 {
				return p.errf(c, "bad persistence_timeout %q", strings.Join(c.args, " "))
			}
			persist = n
		case "persistence_granularity":
			return p.errf(c, "%s is not supported", c.key)
		case "alpha", "omega", "quorum", "hysteresis", "virtualhost", "sorry_server", "syn_proxy", "quorum_up", "quorum_down":
			return p.errf(c, "%s is not supported", c.key)
		default:
			return p.errf(c, "unknown virtual_server keyword %q", c.key)
		}
	}
	if isMatch {
		if kind != lb.SNAT {
			return p.errf(n, "virtual_server match needs lb_kind SNAT")
		}
		m, err := lb.ParseMatch(strings.Join(append([]string{"proto=" + strings.ToLower(proto.String())}, matchParts...), ","))
		if err != nil {
			return p.errf(matchNode, "%v", err)
		}
		keys = []lb.ServiceKey{lb.MatchKey(m)}
	} else if kind == lb.SNAT {
		return p.errf(n, "lb_kind SNAT needs a match service (virtual_server match NAME)")
	}
	for _, k := range keys {
		if !k.IsMatch() {
			k.Proto = proto
		}
		p.res.Ops = append(p.res.Ops, lb.Op{Kind: lb.OpAddService, Service: k, Scheduler: sched, Persistence: persist})
		for _, r := range reals {
			real, err := p.realServer(r, k.Port, interval)
			if err != nil {
				return err
			}
			real.Forward = kind
			p.res.Ops = append(p.res.Ops, lb.Op{Kind: lb.OpAddReal, Service: k, Real: real})
		}
		for _, la := range laddrs {
			p.res.Ops = append(p.res.Ops, lb.Op{Kind: lb.OpAddLaddr, Service: k, Laddr: la})
		}
	}
	return nil
}

// lbKinds maps keepalived's lb_kind onto forwarding methods. Without
// lb_kind mbx uses FNAT (DPVS's configurations always name it).
var lbKinds = map[string]lb.Forward{"FNAT": lb.FullNAT, "DR": lb.DirectRoute, "TUN": lb.Tunnel, "NAT": lb.Masquerade, "SNAT": lb.SNAT}

func seconds(n *node) (time.Duration, error) {
	if len(n.args) != 1 {
		return 0, fmt.Errorf("%s needs one value", n.key)
	}
	f, err := strconv.ParseFloat(n.args[0], 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%s: bad number %q", n.key, n.args[0])
	}
	return time.Duration(f * float64(time.Second)), nil
}

func (p *parser) realServer(n *node, vport uint16, interval time.Duration) (lb.Real, error) {
	if len(n.args) < 1 || len(n.args) > 2 {
		return lb.Real{}, p.errf(n, "want \"real_server RIP [PORT]\"")
	}
	a, err := netip.ParseAddr(n.args[0])
	if err != nil {
		return lb.Real{}, p.errf(n, "bad real server address %q", n.args[0])
	}
	r := lb.Real{Addr: a, Port: vport, Weight: 1, Forward: lb.FullNAT}
	if len(n.args) == 2 {
		port, err := strconv.ParseUint(n.args[1], 10, 16)
		if err != nil {
			return lb.Real{}, p.errf(n, "bad port %q", n.args[1])
		}
		r.Port = uint16(port)
	}
	for _, c := range n.children {
		switch c.key {
		case "weight":
			w, err := strconv.Atoi(strings.Join(c.args, ""))
			if err != nil {
				return lb.Real{}, p.errf(c, "bad weight %q", strings.Join(c.args, " "))
			}
			r.Weight = w
		case "inhibit_on_failure":
			r.InhibitOnFailure = true
		case "TCP_CHECK", "HTTP_GET", "SSL_GET", "UDP_CHECK", "MISC_CHECK":
			chk, err := p.check(c, interval)
			if err != nil {
				return lb.Real{}, err
			}
			r.Check = chk
		default:
			return lb.Real{}, p.errf(c, "unknown real_server keyword %q", c.key)
		}
	}
	return r, nil
}

func (p *parser) check(n *node, interval time.Duration) (lb.Check, error) {
	c := lb.Check{Type: map[string]string{"TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "https", "UDP_CHECK": "udp", "MISC_CHECK": "misc"}[n.key], Interval: interval}
	for _, o := range n.children {
		var err error
		switch o.key {
		case "connect_timeout", "misc_timeout":
			c.Timeout, err = seconds(o)
		case "delay_loop":
			c.Interval, err = seconds(o)
		case "connect_port":
			var port uint64
			port, err = strconv.ParseUint(strings.Join(o.args, ""), 10, 16)
			c.Port = uint16(port)
		case "nb_sock_retry", "nb_get_retry", "retry":
			c.Retries, err = strconv.Atoi(strings.Join(o.args, ""))
		case "delay_before_retry":
			p.warn(o, "delay_before_retry: mbx retries at once within the check")
		case "misc_path":
			c.Command = strings.Join(o.args, " ")
		case "url":
			for _, u := range o.children {
				switch u.key {
				case "path":
					c.Path = strings.Join(u.args, "")
				case "status_code":
					c.Status, err = strconv.Atoi(strings.Join(u.args, ""))
				case "digest":
					return c, p.errf(u, "url digest is not supported (use status_code)")
				default:
					return c, p.errf(u, "unknown url keyword %q", u.key)
				}
			}
		default:
			return c, p.errf(o, "unknown %s keyword %q", n.key, o.key)
		}
		if err != nil {
			return c, p.errf(o, "%s: %v", o.key, err)
		}
	}
	return c, nil
}

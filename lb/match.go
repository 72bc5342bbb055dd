package lb

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Match is an SNAT "match" service (DPVS's ipvsadm -H): which LAN traffic
// mbx translates to its WAN address. Its text form is DPVS's:
// proto=tcp,src-range=198.18.2.0-198.18.2.254,dst-range=A-B,oif=wan0,iif=lan0.
type Match struct {
	Proto        Proto
	SrcLo, SrcHi netip.Addr // zero: any
	DstLo, DstHi netip.Addr
	IIF, OIF     string
}

// ParseMatch parses DPVS's match text.
func ParseMatch(s string) (Match, error) {
	var m Match
	if strings.TrimSpace(s) == "" {
		return m, fmt.Errorf("empty match (want e.g. proto=tcp,src-range=198.18.2.0-198.18.2.254,oif=wan0)")
	}
	rng := func(v string) (netip.Addr, netip.Addr, error) {
		lo, hi, ok := strings.Cut(v, "-")
		if !ok {
			hi = lo
		}
		a, err1 := netip.ParseAddr(lo)
		b, err2 := netip.ParseAddr(hi)
		if err1 != nil || err2 != nil || !a.Is4() || !b.Is4() || b.Less(a) {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("bad range %q (want A-B, IPv4, A <= B; ports are not supported)", v)
		}
		return a, b, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || v == "" {
			return m, fmt.Errorf("match %q: %q is not key=value", s, kv)
		}
		var err error
		switch k {
		case "proto":
			switch strings.ToLower(v) {
			case "tcp":
				m.Proto = TCP
			case "udp":
				m.Proto = UDP
			case "icmp":
				m.Proto = ICMP
			default:
				return m, fmt.Errorf("match %q: unknown proto %q (tcp, udp, icmp)", s, v)
			}
		case "src-range":
			m.SrcLo, m.SrcHi, err = rng(v)
		case "dst-range":
			m.DstLo, m.DstHi, err = rng(v)
		case "iif":
			m.IIF = v
		case "oif":
			m.OIF = v
		default:
			return m, fmt.Errorf("match %q: unknown key %q (proto, src-range, dst-range, iif, oif)", s, k)
		}
		if err != nil {
			return m, fmt.Errorf("match %q: %w", s, err)
		}
	}
	if m.Proto == 0 {
		return m, fmt.Errorf("match %q: no proto", s)
	}
	if !m.SrcLo.IsValid() && !m.DstLo.IsValid() && m.IIF == "" && m.OIF == "" {
		return m, fmt.Errorf("match %q: matches every packet; give src-range, dst-range, iif or oif", s)
	}
	return m, nil
}

// String is the canonical text (fixed key order), used as the service key.
func (m Match) String() string {
	var parts []string
	parts = append(parts, "proto="+strings.ToLower(m.Proto.String()))
	if m.SrcLo.IsValid() {
		parts = append(parts, "src-range="+m.SrcLo.String()+"-"+m.SrcHi.String())
	}
	if m.DstLo.IsValid() {
		parts = append(parts, "dst-range="+m.DstLo.String()+"-"+m.DstHi.String())
	}
	if m.IIF != "" {
		parts = append(parts, "iif="+m.IIF)
	}
	if m.OIF != "" {
		parts = append(parts, "oif="+m.OIF)
	}
	return strings.Join(parts, ",")
}

// MatchKey is the service key of a match service.
func MatchKey(m Match) ServiceKey { return ServiceKey{Proto: m.Proto, Match: m.String()} }

// IsMatch reports whether k names an SNAT match service.
func (k ServiceKey) IsMatch() bool { return k.Match != "" }

// ParsedMatch returns the match of a match service.
func (k ServiceKey) ParsedMatch() Match {
	m, _ := ParseMatch(k.Match)
	return m
}

// MatchServices lists the match services in a stable order.
func (c *Config) MatchServices() []*Service {
	var out []*Service
	for _, s := range c.Services {
		if s.Key.IsMatch() {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key.Match < out[j].Key.Match })
	return out
}

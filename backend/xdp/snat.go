package xdp

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/mbx-net/mbx/lb"
)

const (
	snatRules  = 16   // SNAT_RULES in snat.h
	snatFamily = 0xff // SNAT_FAMILY: svc_key.family of a match service
)

// matchHash names a match service in the datapath's service map (its
// svc_key.addr[0]); stable, so a reload keeps the service.
func matchHash(match string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(match))
	return h.Sum32()
}

func hostOrder(a netip.Addr, def uint32) uint32 {
	if !a.IsValid() {
		return def
	}
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// snatRuleEntries builds the datapath's SNAT rules from the match services
// (in match order; the first match wins), resolving iif/oif. Nothing is
// written: an unknown interface refuses the whole configuration.
func snatRuleEntries(cfg *lb.Config) ([]mbxSnatRule, error) {
	svcs := cfg.MatchServices()
	if len(svcs) > snatRules {
		return nil, fmt.Errorf("%d SNAT match services, at most %d", len(svcs), snatRules)
	}
	var out []mbxSnatRule
	for _, s := range svcs {
		m := s.Key.ParsedMatch()
		r := mbxSnatRule{
			SrcLo: hostOrder(m.SrcLo, 0), SrcHi: hostOrder(m.SrcHi, math.MaxUint32),
			DstLo: hostOrder(m.DstLo, 0), DstHi: hostOrder(m.DstHi, math.MaxUint32),
			SvcHash: matchHash(s.Key.Match), Proto: uint8(m.Proto),
		}
		for _, x := range []struct {
			name string
			to   *uint32
		}{{m.IIF, &r.Iif}, {m.OIF, &r.Oif}} {
			if x.name == "" {
				continue
			}
			l, err := netlink.LinkByName(x.name)
			if err != nil {
				return nil, fmt.Errorf("service %s: interface %s: %w", s.Key, x.name, err)
			}
			*x.to = uint32(l.Attrs().Index)
		}
		out = append(out, r)
	}
	return out, nil
}

func (b *Backend) writeSNATRules(rules []mbxSnatRule) error {
	for i := range snatRules {
		var r mbxSnatRule
		if i < len(rules) {
			r = rules[i]
		}
		if err := b.objs.SnatRules.Put(uint32(i), &r); err != nil {
			return fmt.Errorf("snat rules: %w", err)
		}
	}
	if len(rules) != b.snatCount {
		b.snatCount = len(rules)
		return b.writeConfig()
	}
	return nil
}

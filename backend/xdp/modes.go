package xdp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/lb"
)

// checkModes refuses what a forwarding method cannot do on this node,
// before anything is written: DR needs the real server on a link of one of
// mbx's interfaces (it only rewrites MAC addresses), a tunnel needs a route.
func (b *Backend) checkModes(cfg *lb.Config) error {
	for _, s := range cfg.Services {
		for _, r := range s.Reals {
			if !r.Forward.Direct() {
				continue
			}
			rt, err := routeTo(r.Addr)
			if err != nil {
				return fmt.Errorf("service %s: real server %s: no route for %s (%v)", s.Key, r.Addr, r.Forward.ForwardName(), err)
			}
			if r.Forward == lb.DirectRoute {
				if rt.Gw != nil {
					return fmt.Errorf("service %s: real server %s is not on-link (reached via %s): DR needs it on a link of mbx's interfaces; use -i (tunnel) or -b", s.Key, r.Addr, rt.Gw)
				}
				if l, err := netlink.LinkByIndex(rt.LinkIndex); len(b.opts.Ifaces) > 0 && (err != nil || !b.isOurIface(l.Attrs().Name)) {
					return fmt.Errorf("service %s: real server %s is not on a link of mbx's interfaces (%v): DR sends to it directly", s.Key, r.Addr, b.opts.Ifaces)
				}
			}
		}
	}
	return nil
}

func (b *Backend) isOurIface(name string) bool {
	for _, i := range b.opts.Ifaces {
		if i == name {
			return true
		}
	}
	return false
}

func routeTo(a netip.Addr) (netlink.Route, error) {
	rs, err := netlink.RouteGet(a.AsSlice())
	if err != nil {
		return netlink.Route{}, err
	}
	if len(rs) == 0 {
		return netlink.Route{}, fmt.Errorf("no route")
	}
	return rs[0], nil
}

// resolveDirect asks the kernel to resolve (or keep resolved) the next hop
// of every DR and tunnel real server. The datapath drops such a packet when
// its next hop is unknown: handing it to the kernel would deliver it to the
// local VIP.
func (b *Backend) resolveDirect() {
	b.mu.Lock()
	var addrs []netip.Addr
	for _, a := range b.direct {
		addrs = append(addrs, a)
	}
	b.mu.Unlock()
	for _, a := range addrs {
		rt, err := routeTo(a)
		if err != nil {
			continue
		}
		nh := net.IP(a.AsSlice())
		if rt.Gw != nil {
			nh = rt.Gw
		}
		if neighValid(rt.LinkIndex, neighFamily(a), nh) {
			continue
		}
		// NTF_USE: "use this entry": the kernel starts resolution. Only for
		// a missing or failed entry: on a valid one (a static entry too)
		// it leaves the entry INCOMPLETE.
		_ = netlink.NeighSet(&netlink.Neigh{LinkIndex: rt.LinkIndex, Family: neighFamily(a), IP: net.IP(nh),
			Flags: unix.NTF_USE, State: netlink.NUD_NONE})
	}
}

// neighValid reports whether the kernel has a usable entry for ip.
func neighValid(ifindex, family int, ip net.IP) bool {
	ns, err := netlink.NeighList(ifindex, family)
	if err != nil {
		return false
	}
	for _, n := range ns {
		if n.IP.Equal(ip) {
			return n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP|netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0
		}
	}
	return false
}

// writeNATSrcBits rebuilds the prefilter over NAT real servers' addresses
// (their replies are addressed to clients, not to one of ours).
func (b *Backend) writeNATSrcBits(cfg *lb.Config) error {
	words := make([]uint64, localBitsWords)
	var direct []netip.Addr
	for _, s := range cfg.Services {
		for _, r := range s.Reals {
			if r.Forward.Direct() {
				direct = append(direct, r.Addr)
			}
			if r.Forward != lb.Masquerade || !r.Addr.Is4() {
				continue
			}
			a := r.Addr.As4()
			low := uint32(a[2])<<8 | uint32(a[3])
			words[low>>6] |= 1 << (low & 63)
		}
	}
	b.direct = direct
	keys := make([]uint32, localBitsWords)
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := b.objs.NatSrcBits.BatchUpdate(keys, words, nil); err != nil {
		return fmt.Errorf("nat_src_bits: %w", err)
	}
	return nil
}

// tunnelSrc is the config's outer-source base and mask (memory order, as
// the datapath reads them); zero: the egress interface's address.
func tunnelSrc(p netip.Prefix) (base, mask uint32) {
	if !p.IsValid() || !p.Addr().Is4() {
		return 0, 0
	}
	m := net.CIDRMask(p.Bits(), 32)
	a := p.Masked().Addr().As4()
	return binary.LittleEndian.Uint32(a[:]), binary.LittleEndian.Uint32(m)
}

func neighFamily(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

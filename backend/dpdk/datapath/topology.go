package datapath

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/mbx-net/mbx/backend/vectors"
)

// FromVectorFile builds a datapath for a vector file's topology (its
// interfaces, their connected prefixes and static neighbours), for the
// tests that replay vectors through this datapath directly and through
// DPDK ports. It returns the port index of each interface name.
func FromVectorFile(f *vectors.File, opts Options) (*Datapath, map[string]int, error) {
	idx := map[string]int{}
	var ports []Port
	for i, ifc := range f.Ifaces {
		mac, err := net.ParseMAC(ifc.MAC)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", ifc.Name, err)
		}
		port := Port{Name: ifc.Name, MAC: mac, MTU: ifc.MTU}
		if ifc.Addr != "" { // an inline pair's interfaces have none
			pf, err := netip.ParsePrefix(ifc.Addr)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", ifc.Name, err)
			}
			port.Prefixes, port.Addrs = []netip.Prefix{pf.Masked()}, []netip.Addr{pf.Addr()}
		}
		// Extra addresses with a network (not a VIP's or LIP's host route)
		// are the port's too: a second family's subnet.
		for _, a := range ifc.Addrs {
			if xp, err := netip.ParsePrefix(a); err == nil && xp.Bits() < xp.Addr().BitLen() {
				port.Prefixes = append(port.Prefixes, xp.Masked())
				port.Addrs = append(port.Addrs, xp.Addr())
			}
		}
		ports = append(ports, port)
		idx[ifc.Name] = i
	}
	d, err := New(ports, opts)
	if err != nil {
		return nil, nil, err
	}
	for i, ifc := range f.Ifaces {
		for _, n := range ifc.Neighbors {
			mac, err := net.ParseMAC(n.MAC)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: neighbour %s: %w", ifc.Name, n.IP, err)
			}
			ip, err := netip.ParseAddr(n.IP)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: neighbour: %w", ifc.Name, err)
			}
			if err := d.SetNeighbor(i, ip, mac); err != nil {
				return nil, nil, err
			}
		}
	}
	for _, r := range f.Routes {
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			return nil, nil, fmt.Errorf("route %s: %w", r.Dst, err)
		}
		via, err := netip.ParseAddr(r.Via)
		if err != nil {
			return nil, nil, fmt.Errorf("route %s: %w", r.Dst, err)
		}
		if err := d.AddRoute(dst, via); err != nil {
			return nil, nil, err
		}
	}
	return d, idx, nil
}

// NotYet names the vector files whose configuration Apply takes but whose
// packets need what is not built here yet (replays skip them with this).
var NotYet = map[string]string{}

package datapath

import (
	"errors"
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
	if len(f.Routes) > 0 {
		return nil, nil, errors.New("static routes are not in the DPDK datapath yet")
	}
	idx := map[string]int{}
	var ports []Port
	for i, ifc := range f.Ifaces {
		mac, err := net.ParseMAC(ifc.MAC)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", ifc.Name, err)
		}
		pf, err := netip.ParsePrefix(ifc.Addr)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", ifc.Name, err)
		}
		ports = append(ports, Port{Name: ifc.Name, MAC: mac, Prefixes: []netip.Prefix{pf.Masked()}})
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
	return d, idx, nil
}

// NotYet names the vector files whose configuration Apply takes but whose
// packets need what is not built here yet (replays skip them with this).
var NotYet = map[string]string{
	"fragments": "fragments following their flow (bpf/frag.h) are not in the Go datapath yet",
	"icmp":      "ICMP error translation (bpf/icmp.h) is not in the Go datapath yet",
}

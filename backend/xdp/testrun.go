package xdp

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/backend/vectors"
)

// xdpMd mirrors struct xdp_md, the context BPF_PROG_TEST_RUN accepts.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

var verdictNames = map[uint32]string{0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}

// TestRun runs the program once on frame as if received on ifindex. It must
// be called in the namespace that holds ifindex (fib lookups resolve there).
func TestRun(prog *ebpf.Program, ifindex int, frame []byte) (string, []byte, error) {
	out := make([]byte, len(frame)+256)
	ctx := xdpMd{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}
	opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: &ctx}
	ret, err := prog.Run(opts)
	if err != nil {
		return "", nil, fmt.Errorf("BPF_PROG_TEST_RUN: %w", err)
	}
	// cilium/ebpf trims opts.DataOut to the length the kernel reported.
	return verdictNames[ret], opts.DataOut, nil
}

// BuildTopology creates a vector file's interfaces as veth pairs (the far
// end named NAME+"p" stays in the namespace, up, with GRO on so redirects
// into it would be accepted), with addresses and static neighbours, and
// enables forwarding. Call it inside a private namespace (lab.Worker).
func BuildTopology(f *vectors.File) (map[string]int, error) {
	idx := map[string]int{}
	for _, k := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(k, []byte("1"), 0o644); err != nil {
			return nil, err
		}
	}
	for _, ifc := range f.Ifaces {
		mac, err := net.ParseMAC(ifc.MAC)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ifc.Name, err)
		}
		la := netlink.NewLinkAttrs()
		la.Name = ifc.Name
		la.HardwareAddr = mac
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: ifc.Name + "p"}); err != nil {
			return nil, fmt.Errorf("veth %s: %w", ifc.Name, err)
		}
		l, err := netlink.LinkByName(ifc.Name)
		if err != nil {
			return nil, err
		}
		peer, err := netlink.LinkByName(ifc.Name + "p")
		if err != nil {
			return nil, err
		}
		for _, s := range append([]string{ifc.Addr}, ifc.Addrs...) {
			if s == "" {
				continue
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", ifc.Name, err)
			}
			a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
			if p.Addr().Is6() {
				a.Flags = unix.IFA_F_NODAD // usable at once, as a VIP must be
			}
			if err := netlink.AddrAdd(l, a); err != nil {
				return nil, fmt.Errorf("%s addr %s: %w", ifc.Name, s, err)
			}
		}
		if ifc.MTU > 0 {
			if err := netlink.LinkSetMTU(l, ifc.MTU); err != nil {
				return nil, fmt.Errorf("%s mtu: %w", ifc.Name, err)
			}
		}
		for _, x := range []netlink.Link{l, peer} {
			if err := netlink.LinkSetUp(x); err != nil {
				return nil, err
			}
		}
		for _, n := range ifc.Neighbors {
			nm, err := net.ParseMAC(n.MAC)
			if err != nil {
				return nil, err
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
				IP: net.ParseIP(n.IP), HardwareAddr: nm}); err != nil {
				return nil, fmt.Errorf("neighbour %s: %w", n.IP, err)
			}
		}
		idx[ifc.Name] = l.Attrs().Index
	}
	for _, r := range f.Routes {
		_, dst, err := net.ParseCIDR(r.Dst)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r.Dst, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(r.Via)}); err != nil {
			return nil, fmt.Errorf("route %s via %s: %w", r.Dst, r.Via, err)
		}
	}
	return idx, nil
}

// Package decap is the real-server side of mbx's tunnel mode: an XDP
// program (bpf/decap.c) that strips the outer header of IP-in-IP and
// ip6ip6 packets for local VIPs and hands the inner packet to the stack, since this kernel
// has no ipip device (Katran ships the same for the same reason).
package decap

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Attach puts the decap program on iface, replacing one already there.
// With vips, only packets for them are decapsulated. The program is
// attached through netlink, so it stays after this process exits (as
// `ip link set dev IF xdp ...` does); Detach removes it.
func Attach(iface string, vips []netip.Addr, generic bool) error {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", iface, err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgId)); err == nil {
			info, _ := p.Info()
			p.Close()
			if info == nil || info.Name != "mbx_decap" {
				return fmt.Errorf("interface %s already has another XDP program (id %d); remove it first", iface, x.ProgId)
			}
		}
	}
	var objs decapObjects
	if err := loadDecapObjects(&objs, nil); err != nil {
		return fmt.Errorf("loading the decap program: %w", err)
	}
	defer objs.Close()
	cfg := decapDecapCfg{}
	if len(vips) == 0 {
		cfg.AnyVip = 1
	}
	if err := objs.DecapConfig.Put(uint32(0), cfg); err != nil {
		return err
	}
	for _, v := range vips {
		if v.Is6() {
			if err := objs.DecapVips6.Put(v.As16(), uint32(1)); err != nil {
				return err
			}
			continue
		}
		if err := objs.DecapVips.Put(v.As4(), uint32(1)); err != nil {
			return err
		}
	}
	flags := unix.XDP_FLAGS_DRV_MODE
	if generic {
		flags = unix.XDP_FLAGS_SKB_MODE
	}
	if err := netlink.LinkSetXdpFdWithFlags(l, objs.MbxDecap.FD(), flags); err != nil {
		return fmt.Errorf("attaching decap to %s: %w", iface, err)
	}
	return nil
}

// Detach removes the decap program from iface.
func Detach(iface string) error {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", iface, err)
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return errors.New("no XDP program on " + iface)
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgId))
	if err == nil {
		info, _ := p.Info()
		p.Close()
		if info != nil && info.Name != "mbx_decap" {
			return fmt.Errorf("the XDP program on %s is not mbx's decap (%s)", iface, info.Name)
		}
	}
	return netlink.LinkSetXdpFd(l, -1)
}

// Stats reads the counters of the decap program on iface: decapsulated,
// passed untouched, malformed.
func Stats(iface string) (decapsulated, passed, malformed uint64, err error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return 0, 0, 0, err
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return 0, 0, 0, errors.New("no XDP program on " + iface)
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgId))
	if err != nil {
		return 0, 0, 0, err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return 0, 0, 0, err
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		mi, _ := m.Info()
		if mi == nil || mi.Name != "decap_stats" {
			m.Close()
			continue
		}
		var out [3]uint64
		for i := range out {
			var per []uint64
			if err := m.Lookup(uint32(i), &per); err == nil {
				for _, v := range per {
					out[i] += v
				}
			}
		}
		m.Close()
		return out[0], out[1], out[2], nil
	}
	return 0, 0, 0, errors.New("the XDP program on " + iface + " is not mbx's decap")
}

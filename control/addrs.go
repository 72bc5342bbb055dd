package control

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/lb"
)

// ifAddr is an address on a device.
type ifAddr struct {
	prefix netip.Prefix
	dev    string
}

// wantedAddrs is every address cfg needs on a device: mbx addr entries and
// each service's LIPs (as /32 or /128).
func wantedAddrs(cfg *lb.Config) map[ifAddr]bool {
	w := map[ifAddr]bool{}
	for _, a := range cfg.Addresses {
		w[ifAddr{a.Prefix, a.Dev}] = true
	}
	for _, s := range cfg.Services {
		for _, la := range s.LocalAddrs {
			w[ifAddr{netip.PrefixFrom(la.Addr, la.Addr.BitLen()), la.Dev}] = true
		}
	}
	return w
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		// No duplicate address detection: a VIP or LIP must answer at once
		// (a tentative address is neither answered for nor a source).
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// checkDevices fails if a device an address needs does not exist.
func checkDevices(add []ifAddr) error {
	for _, a := range add {
		if _, err := netlink.LinkByName(a.dev); err != nil {
			return fmt.Errorf("device %s for address %s: no such device", a.dev, a.prefix.Addr())
		}
	}
	return nil
}

// addAddr puts a on its device; owned is false when it was already there
// (an operator's address is tolerated and never removed by mbx).
func addAddr(a ifAddr) (owned bool, err error) {
	l, err := netlink.LinkByName(a.dev)
	if err != nil {
		return false, fmt.Errorf("device %s: %w", a.dev, err)
	}
	if err := netlink.AddrAdd(l, nlAddr(a.prefix)); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return false, nil
		}
		return false, fmt.Errorf("adding %s to %s: %w", a.prefix, a.dev, err)
	}
	return true, nil
}

func delAddr(a ifAddr) error {
	l, err := netlink.LinkByName(a.dev)
	if err != nil {
		return nil // device gone, address with it
	}
	if err := netlink.AddrDel(l, nlAddr(a.prefix)); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("removing %s from %s: %w", a.prefix, a.dev, err)
	}
	return nil
}

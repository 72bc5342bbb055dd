package xsk

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Queues is how many receive queues an AF_XDP output serves
// (bricks.XSKQueues; bricks.h XSK_QUEUES).
const Queues = 8

// Consumer reads one AF_XDP output: a socket per receive queue of the
// engine's interface, each placed in the running datapath's socket map.
type Consumer struct {
	socks []*Socket
	next  int
}

// Attach opens the sockets of the AF_XDP output whose slot is slot, on the
// engine interface iface (both from the daemon: `mbx bricks show --json`
// lists them). It finds the socket map through the XDP program on iface.
func Attach(iface string, slot uint32) (*Consumer, error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface, err)
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached || x.ProgId == 0 {
		return nil, fmt.Errorf("no XDP program on %s: is the engine running?", iface)
	}
	xsks, err := socketMap(x.ProgId)
	if err != nil {
		return nil, fmt.Errorf("the XDP program on %s: %w", iface, err)
	}
	defer xsks.Close()
	// The queues in use (real_num_rx_queues), not the allocated ones.
	rxq, _ := filepath.Glob(filepath.Join("/sys/class/net", iface, "queues", "rx-*"))
	queues := min(max(len(rxq), 1), Queues)
	c := &Consumer{}
	for q := range queues {
		s, err := Open(l.Attrs().Index, q)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.socks = append(c.socks, s)
		if err := xsks.Put(slot*Queues+uint32(q), uint32(s.FD())); err != nil {
			c.Close()
			return nil, fmt.Errorf("placing the AF_XDP socket of queue %d: %w", q, err)
		}
	}
	return c, nil
}

// socketMap finds brick_xsks: mbx_xdp tail-calls the brick program in
// brick_prog, and that program holds the socket map.
func socketMap(progID uint32) (*ebpf.Map, error) {
	entry, err := ebpf.NewProgramFromID(ebpf.ProgramID(progID))
	if err != nil {
		return nil, err
	}
	defer entry.Close()
	progs, err := mapNamed(entry, "brick_prog")
	if err != nil {
		return nil, err
	}
	defer progs.Close()
	var id uint32
	if err := progs.Lookup(uint32(0), &id); err != nil {
		return nil, fmt.Errorf("no brick program installed: %w", err)
	}
	bp, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return nil, err
	}
	defer bp.Close()
	return mapNamed(bp, "brick_xsks")
}

func mapNamed(p *ebpf.Program, name string) (*ebpf.Map, error) {
	info, err := p.Info()
	if err != nil {
		return nil, err
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		if mi, err := m.Info(); err == nil && mi.Name == name {
			return m, nil
		}
		m.Close()
	}
	return nil, fmt.Errorf("no map %s: not mbx's datapath (or too old for AF_XDP outputs)", name)
}

// Receive calls fn with each waiting frame of every queue, waiting up to
// timeout when none is waiting.
func (c *Consumer) Receive(timeout time.Duration, fn func(frame []byte)) (int, error) {
	drain := func() (int, error) {
		total := 0
		for _, s := range c.socks {
			n, err := s.Receive(0, fn)
			total += n
			if err != nil {
				return total, err
			}
		}
		return total, nil
	}
	if n, err := drain(); n > 0 || err != nil {
		return n, err
	}
	pfd := make([]unix.PollFd, len(c.socks))
	for i, s := range c.socks {
		pfd[i] = unix.PollFd{Fd: int32(s.FD()), Events: unix.POLLIN}
	}
	if _, err := unix.Poll(pfd, int(timeout.Milliseconds())); err != nil && !errors.Is(err, unix.EINTR) {
		return 0, err
	}
	return drain()
}

// Dropped sums the sockets' kernel-side drops.
func (c *Consumer) Dropped() uint64 {
	var n uint64
	for _, s := range c.socks {
		d, _ := s.Dropped()
		n += d
	}
	return n
}

// Close closes the sockets (the kernel takes them out of the map).
func (c *Consumer) Close() error {
	var errs []error
	for _, s := range c.socks {
		errs = append(errs, s.Close())
	}
	c.socks = nil
	return errors.Join(errs...)
}

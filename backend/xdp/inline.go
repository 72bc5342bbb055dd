package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/bricks/xsk"
	"github.com/mbx-net/mbx/monitor"
)

// Constants of bpf/inline.h.
const (
	monInline  = 0x4
	inlQueues  = 8
	inlGo      = 1
	inlForward = 2
	inlDrop    = 3
)

// InlineOptions configure the stream monitor inline between interface
// pairs (mOS's nic_forward_table): each pair forwards both ways.
type InlineOptions struct {
	Pairs [][2]int // ifindexes, attached
	// Filter, when set, is the stream filter's eBPF body: connections it
	// does not match (and orphans) are forwarded in XDP, never seen by Go.
	Filter asm.Instructions
}

// Inline runs a monitor.Monitor inline: the packets of the connections its
// filter selects reach Go over AF_XDP, run through the tracker and the
// handlers, and are sent on by the peer interface unless a handler dropped
// them. Handlers' per-connection decisions (Conn.Drop, StopMonitoring on
// both sides) are written back to XDP, which then handles the rest of the
// connection alone.
type Inline struct {
	b       *Backend
	m       *monitor.Monitor
	ifaces  []inlineIface
	swapped bool
	wake    int // eventfd: Stop wakes Run
	stopped chan struct{}
	done    chan struct{}
	running bool

	mu    sync.Mutex // guards the monitor against Snapshot from other goroutines
	stats inlineStats
}

type inlineIface struct {
	ifindex, peer int
	socks         []*xsk.Socket
	peerSocks     []*xsk.Socket // the peer's sockets, to send on
}

// inlineStats are the Go side's counters.
type inlineStats struct {
	forwarded, dropped, txFull uint64
}

// StartInline makes the pairs inline: forwarding in XDP, the filtered
// connections through m. Handlers run on the goroutine calling Run.
func (b *Backend) StartInline(m *monitor.Monitor, opts InlineOptions) (*Inline, error) {
	in := &Inline{b: b, m: m, stopped: make(chan struct{}), done: make(chan struct{})}
	seen := map[int]bool{}
	for _, p := range opts.Pairs {
		if p[0] == p[1] {
			return nil, fmt.Errorf("inline pair: ifindex %d with itself", p[0])
		}
		for i, ifx := range p {
			if seen[ifx] {
				return nil, fmt.Errorf("inline: ifindex %d is in two pairs", ifx)
			}
			seen[ifx] = true
			in.ifaces = append(in.ifaces, inlineIface{ifindex: ifx, peer: p[1-i]})
		}
	}
	slots := map[int]int{}
	for _, f := range in.ifaces {
		if other, ok := slots[f.ifindex%ifSlots]; ok {
			return nil, fmt.Errorf("inline: ifindexes %d and %d differ by a multiple of %d", other, f.ifindex, ifSlots)
		}
		slots[f.ifindex%ifSlots] = f.ifindex
	}
	ok := false
	defer func() {
		if !ok {
			in.cleanup()
		}
	}()
	var err error
	if in.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	byIndex := map[int][]*xsk.Socket{}
	for i := range in.ifaces {
		f := &in.ifaces[i]
		if f.socks, err = in.openSockets(f.ifindex); err != nil {
			return nil, err
		}
		byIndex[f.ifindex] = f.socks
	}
	for i := range in.ifaces {
		in.ifaces[i].peerSocks = byIndex[in.ifaces[i].peer]
	}
	if opts.Filter != nil {
		if err := b.swapMonitorFilter(opts.Filter); err != nil {
			return nil, err
		}
		in.swapped = true
	}
	m.OnFlowAction(in.flowAction)
	for _, f := range in.ifaces {
		v := mbxMonIface{Ifindex: uint32(f.ifindex), Flags: monOn | monInline, Peer: uint32(f.peer)}
		if err := b.objs.MonIfaces.Put(uint32(f.ifindex%ifSlots), &v); err != nil {
			return nil, fmt.Errorf("inline on ifindex %d: %w", f.ifindex, err)
		}
	}
	ok = true
	return in, nil
}

// openSockets opens an AF_XDP socket per receive queue in use and places
// them where inline.h redirects.
func (in *Inline) openSockets(ifindex int) ([]*xsk.Socket, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("inline: ifindex %d: %w", ifindex, err)
	}
	name := l.Attrs().Name
	rxq, _ := filepath.Glob(filepath.Join("/sys/class/net", name, "queues", "rx-*"))
	var socks []*xsk.Socket
	for q := range min(max(len(rxq), 1), inlQueues) {
		s, err := xsk.Open(ifindex, q)
		if err != nil {
			for _, s := range socks {
				s.Close()
			}
			return nil, fmt.Errorf("inline on %s: %w", name, err)
		}
		socks = append(socks, s)
		if err := in.b.objs.InlXsks.Put(uint32((ifindex&0xff)*inlQueues+q), uint32(s.FD())); err != nil {
			for _, s := range socks {
				s.Close()
			}
			return nil, fmt.Errorf("inline on %s: placing the AF_XDP socket of queue %d: %w", name, q, err)
		}
	}
	return socks, nil
}

// flowAction writes a handler's per-connection decision to XDP.
func (in *Inline) flowAction(c *monitor.Conn, a monitor.FlowAction) {
	v := uint32(inlForward)
	if a == monitor.FlowDrop {
		v = inlDrop
	}
	for _, k := range monKeysOf(c) {
		if err := in.b.objs.InlFlows.Put(&k, &v); err != nil {
			in.b.log.Warn("inline: recording a connection's verdict", "conn", c.ID, "action", a.String(), "err", err)
		}
	}
}

// monKeysOf is a connection's mon_key (with and without its VLAN tags: a
// monitor ignoring VLANs keys on the 4-tuple alone).
func monKeysOf(c *monitor.Conn) []mbxMonKey {
	a, b := c.Client, c.Server
	if b.Compare(a) < 0 {
		a, b = b, a
	}
	var k mbxMonKey
	put := func(w *[4]uint32, ap netip.AddrPort) {
		raw := (*[16]byte)(unsafe.Pointer(w))
		if ap.Addr().Is4() {
			a4 := ap.Addr().As4()
			copy(raw[12:], a4[:])
		} else {
			*raw = ap.Addr().As16()
		}
	}
	put(&k.A, a)
	put(&k.B, b)
	k.Aport, k.Bport = a.Port(), b.Port()
	if c.IPv6 {
		k.Ipv6 = 1
	}
	keys := []mbxMonKey{k}
	if len(c.VLAN) > 0 {
		k.Nvlan = uint8(min(len(c.VLAN), 2))
		copy(k.Vlan[:], c.VLAN)
		keys = append(keys, k)
	}
	return keys
}

// Run receives, judges and forwards packets until Stop.
func (in *Inline) Run() error {
	in.mu.Lock()
	in.running = true
	in.mu.Unlock()
	defer close(in.done)
	pfds := []unix.PollFd{{Fd: int32(in.wake), Events: unix.POLLIN}}
	for _, f := range in.ifaces {
		for _, s := range f.socks {
			pfds = append(pfds, unix.PollFd{Fd: int32(s.FD()), Events: unix.POLLIN})
		}
	}
	lastTick := time.Now()
	for {
		if _, err := unix.Poll(pfds, 200); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("inline: poll: %w", err)
		}
		if pfds[0].Revents != 0 {
			return nil
		}
		in.mu.Lock()
		for i := range in.ifaces {
			f := &in.ifaces[i]
			for q, s := range f.socks {
				out := f.peerSocks[q%len(f.peerSocks)]
				if _, err := s.Receive(0, func(frame []byte) { in.judge(frame, out) }); err != nil {
					in.mu.Unlock()
					return fmt.Errorf("inline: receive: %w", err)
				}
			}
		}
		for i := range in.ifaces {
			for _, s := range in.ifaces[i].socks {
				if err := s.Flush(); err != nil {
					in.b.log.Warn("inline: send", "err", err)
				}
			}
		}
		if now := time.Now(); now.Sub(lastTick) >= time.Second {
			in.m.Tick(now)
			lastTick = now
		}
		in.mu.Unlock()
	}
}

// judge runs one packet through the monitor and sends it on unless a
// handler dropped it.
func (in *Inline) judge(frame []byte, out *xsk.Socket) {
	in.m.Process(monitor.LinkEthernet, frame, time.Now())
	drop, fwd := in.m.PacketVerdict()
	if drop {
		in.stats.dropped++
		return
	}
	before := out.TxFull
	out.Send(fwd)
	if out.TxFull != before {
		in.stats.txFull++
		return
	}
	in.stats.forwarded++
}

// Stop ends Run, takes the interfaces out of inline mode (their packets go
// to the kernel again) and closes the sockets.
func (in *Inline) Stop() {
	select {
	case <-in.stopped:
		return
	default:
		close(in.stopped)
	}
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(in.wake, one[:])
	in.mu.Lock()
	running := in.running
	in.mu.Unlock()
	if running {
		<-in.done
	}
	in.cleanup()
}

func (in *Inline) cleanup() {
	for _, f := range in.ifaces {
		_ = in.b.objs.MonIfaces.Delete(uint32(f.ifindex % ifSlots))
		for q, s := range f.socks {
			_ = in.b.objs.InlXsks.Delete(uint32((f.ifindex&0xff)*inlQueues + q))
			s.Close()
		}
	}
	in.ifaces = nil
	if in.swapped {
		in.b.restoreMonitorFilter()
		in.swapped = false
	}
	if in.wake > 0 {
		unix.Close(in.wake)
		in.wake = 0
	}
}

// Stats are XDP's counters for the inline interfaces and the Go side's.
func (in *Inline) Stats() (backend.MonitorStats, error) {
	s, err := in.b.monitorStats()
	if err != nil {
		return s, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	gs := in.m.Stats()
	s.Conns, s.Reassembled = gs.Conns, gs.Reassembled
	s.GoForwarded, s.GoDropped, s.TxFull = in.stats.forwarded, in.stats.dropped, in.stats.txFull
	return s, nil
}

// Snapshot calls fn with a copy of every connection the monitor holds.
func (in *Inline) Snapshot(fn func(c *monitor.Conn)) {
	in.mu.Lock()
	var conns []monitor.Conn
	in.m.Conns(func(c *monitor.Conn) { conns = append(conns, *c) })
	in.mu.Unlock()
	for i := range conns {
		fn(&conns[i])
	}
}

// Locked runs fn while no packet is being judged.
func (in *Inline) Locked(fn func()) {
	in.mu.Lock()
	defer in.mu.Unlock()
	fn()
}

// Refresh: the Go tracker is the inline monitor's own; nothing to mirror.
func (in *Inline) Refresh() {}

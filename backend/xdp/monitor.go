package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/monitor"
)

// MonitorFilterFunc is the datapath's stream-filter function (monitor.h).
const MonitorFilterFunc = "mbx_monitor_filter"

// Flags of struct mon_iface.
const (
	monOn   = 0x1
	monCopy = 0x2
)

// MonitorOptions configure the XDP stream monitor.
type MonitorOptions struct {
	Ifindexes []int
	// Filter, when set, is the stream filter's eBPF body
	// (filter.XDPFunction): connections and orphans it does not match are
	// not tracked.
	Filter asm.Instructions
	// BufferSize is how many out-of-order bytes each side holds at most
	// (the Go tracker's Options.BufferSize).
	BufferSize int
	// IdleTimeout ends connections with no packet for this long; Linger
	// keeps ended ones for their late packets. 0: the Go tracker's defaults.
	IdleTimeout, Linger time.Duration
	// Sample, in (0, 1), tracks only that fraction of the connections
	// (chosen by a hash of the connection, the same both ways); the rest
	// cost a parse and a hash. 0 or 1: every connection.
	Sample float64
}

// StartMonitor is backend.MonitorPlane's: the tracker on opts.Ifaces.
func (b *Backend) StartMonitor(m *monitor.Monitor, opts backend.MonitorOptions) (backend.MonitorRun, error) {
	xo := MonitorOptions{BufferSize: opts.BufferSize, IdleTimeout: opts.IdleTimeout, Linger: opts.Linger, Sample: opts.Sample}
	ours := func(name string) (int, error) {
		ifx, err := ifindexOf(name)
		if err != nil {
			return 0, err
		}
		if !b.isOurIface(name) {
			return 0, fmt.Errorf("monitor on %s: mbx is not attached there (add --iface %s)", name, name)
		}
		return ifx, nil
	}
	for _, name := range opts.Ifaces {
		ifx, err := ours(name)
		if err != nil {
			return nil, err
		}
		xo.Ifindexes = append(xo.Ifindexes, ifx)
	}
	if opts.Filter != nil {
		body, err := opts.Filter.XDPFunction()
		if err != nil {
			return nil, err
		}
		xo.Filter = body
	}
	if len(opts.Inline) == 0 {
		return b.StartTracker(m, xo)
	}
	if len(opts.Ifaces) > 0 {
		return nil, errors.New("the stream monitor is either passive or inline, not both")
	}
	if opts.Sample != 0 {
		return nil, errors.New("sampling is for a passive monitor (inline, every connection the filter selects is judged)")
	}
	io := InlineOptions{Filter: xo.Filter}
	for _, p := range opts.Inline {
		var pair [2]int
		for i, name := range p {
			ifx, err := ours(name)
			if err != nil {
				return nil, err
			}
			pair[i] = ifx
		}
		io.Pairs = append(io.Pairs, pair)
	}
	return b.StartInline(m, io)
}

// LiveMonitor runs the BPF tracker on interfaces and feeds its records to a
// monitor.Monitor, whose handlers run on the goroutine calling Run.
type LiveMonitor struct {
	b       *Backend
	m       *monitor.Monitor
	opts    MonitorOptions
	rd      *ringbuf.Reader
	want    uint32
	copy    bool
	monoOff int64
	swapped bool

	re reassembler // fragments (reassemble.go)

	mu     sync.Mutex // guards the mirror against Refresh from other goroutines
	stopCh chan struct{}
}

// mon_rec.kind
const (
	monRecPacket     = 0
	monRecFragment   = 1
	monRecReinjected = 2
)

// monRecSize is sizeof(struct mon_rec): the frame follows it.
const monRecSize = int(unsafe.Sizeof(mbxMonRec{}))

// StartTracker turns the tracker on for opts.Ifindexes (attached
// interfaces) and prepares the records' reader. What is sent to Go follows
// m's handlers: records only for events someone handles, frames only when
// a handler needs them.
func (b *Backend) StartTracker(m *monitor.Monitor, opts MonitorOptions) (*LiveMonitor, error) {
	if opts.BufferSize <= 0 {
		opts.BufferSize = 256 << 10
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	if opts.Linger == 0 {
		opts.Linger = time.Minute
	}
	lm := &LiveMonitor{b: b, m: m, opts: opts, stopCh: make(chan struct{})}
	lm.re.prog = b.reinjectProgram
	lm.re.defrag.MaxDatagrams = maxPendingDatagrams
	for ev := monitor.EvPktIn; ev <= monitor.EvError; ev++ {
		if m.Wants(ev) {
			lm.want |= 1 << ev
		}
	}
	lm.copy = m.NeedsFrames()
	if lm.copy {
		lm.want |= 1 << monitor.EvNewData
	}
	var err error
	if lm.rd, err = ringbuf.NewReader(b.objs.MonEvents); err != nil {
		return nil, fmt.Errorf("monitor ring buffer: %w", err)
	}
	if opts.Filter != nil {
		if err := b.swapMonitorFilter(opts.Filter); err != nil {
			lm.rd.Close()
			return nil, err
		}
		lm.swapped = true
	}
	lm.monoOff = time.Now().UnixNano() - monotonicNow()
	m.OnFlowAction(lm.flowAction)
	flags := uint32(monOn)
	if lm.copy {
		flags |= monCopy
	}
	for _, ifx := range opts.Ifindexes {
		v := mbxMonIface{Ifindex: uint32(ifx), Flags: flags, Want: lm.want, Bufsize: uint32(opts.BufferSize)}
		if opts.Sample > 0 && opts.Sample < 1 {
			v.Sample = max(uint32(opts.Sample*(1<<32)), 1)
		}
		if err := b.objs.MonIfaces.Put(uint32(ifx%ifSlots), &v); err != nil {
			lm.Stop()
			return nil, fmt.Errorf("monitor on ifindex %d: %w", ifx, err)
		}
	}
	return lm, nil
}

// swapMonitorFilter loads the datapath with the stream filter and swaps it
// into every link mbx attached (one stream filter at a time: a passive or
// an inline monitor).
func (b *Backend) swapMonitorFilter(body asm.Instructions) error {
	if b.filtered != nil {
		return errors.New("a stream monitor with a filter is already running")
	}
	prog, err := programVariant("mbx_xdp", map[string]asm.Instructions{MonitorFilterFunc: body}, b.mapByName)
	if err != nil {
		return fmt.Errorf("loading the datapath with the stream filter: %w", err)
	}
	reinject, err := programVariant("mbx_monitor_reinject", map[string]asm.Instructions{MonitorFilterFunc: body}, b.mapByName)
	if err != nil {
		prog.Close()
		return fmt.Errorf("loading the reassembled-datagram tracker with the stream filter: %w", err)
	}
	for _, lk := range b.links {
		if err := lk.Update(prog); err != nil {
			for _, lk := range b.links {
				_ = lk.Update(b.objs.MbxXdp)
			}
			prog.Close()
			reinject.Close()
			return fmt.Errorf("swapping in the filtering datapath: %w", err)
		}
	}
	b.filtered, b.filteredReinject = prog, reinject
	return nil
}

// reinjectProgram is the tracker for datagrams Go reassembled, with the
// running monitor's stream filter.
func (b *Backend) reinjectProgram() *ebpf.Program {
	if b.filteredReinject != nil {
		return b.filteredReinject
	}
	return b.objs.MbxMonitorReinject
}

// restoreMonitorFilter swaps the unfiltered datapath back in.
func (b *Backend) restoreMonitorFilter() {
	for _, lk := range b.links {
		_ = lk.Update(b.objs.MbxXdp)
	}
	if b.filtered != nil {
		b.filtered.Close()
		b.filteredReinject.Close()
		b.filtered, b.filteredReinject = nil, nil
	}
}

// flowAction: a connection both sides stopped monitoring sends no more
// records (mon_quiet). A passive tracker cannot drop: Conn.Drop only ends
// the connection for the handlers.
func (lm *LiveMonitor) flowAction(c *monitor.Conn, a monitor.FlowAction) {
	if a == monitor.FlowBypass {
		if err := lm.b.objs.MonQuiet.Put(c.ID, uint8(1)); err != nil {
			lm.b.log.Warn("monitor: quieting a connection", "conn", c.ID, "err", err)
		}
	}
}

// Stop turns the tracker off and restores the unfiltered datapath.
func (lm *LiveMonitor) Stop() {
	select {
	case <-lm.stopCh:
		return
	default:
		close(lm.stopCh)
	}
	for _, ifx := range lm.opts.Ifindexes {
		_ = lm.b.objs.MonIfaces.Delete(uint32(ifx % ifSlots))
	}
	if lm.swapped {
		lm.b.restoreMonitorFilter()
	}
	lm.rd.Close()
}

// Run reads records until Stop, applying each to the monitor; every
// sweep interval it ends idle connections and forgets lingering ones.
func (lm *LiveMonitor) Run() error {
	var raw ringbuf.Record
	var rec monitor.Record
	next := time.Now().Add(time.Second)
	for {
		lm.rd.SetDeadline(next)
		err := lm.rd.ReadInto(&raw)
		switch {
		case err == nil:
			lm.mu.Lock()
			lm.handle(raw.RawSample, &rec)
			lm.mu.Unlock()
		case errors.Is(err, os.ErrDeadlineExceeded):
			lm.Sweep()
			next = time.Now().Add(time.Second)
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return err
		}
	}
}

// Locked runs fn while no record is being applied: for reading the
// mirrored connections (or a table kept by handlers) from another goroutine.
func (lm *LiveMonitor) Locked(fn func()) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	fn()
}

// Drain applies every record waiting now (tests: after BPF_PROG_TEST_RUN).
func (lm *LiveMonitor) Drain() error {
	var raw ringbuf.Record
	var rec monitor.Record
	for lm.rd.AvailableBytes() > 0 {
		lm.rd.SetDeadline(time.Now())
		if err := lm.rd.ReadInto(&raw); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			return err
		}
		lm.handle(raw.RawSample, &rec)
	}
	return nil
}

// handle applies one ring-buffer sample: a record to the monitor, a
// fragment to the reassembler (which may reinject a datagram, whose record
// follows in the ring).
func (lm *LiveMonitor) handle(raw []byte, rec *monitor.Record) {
	if len(raw) >= monRecSize {
		if r := (*mbxMonRec)(unsafe.Pointer(&raw[0])); r.Kind == monRecFragment {
			if n := int(r.CapLen); n <= len(raw)-monRecSize {
				if err := lm.re.fragment(raw[monRecSize:monRecSize+n], r.Ifindex, lm.monoOff+int64(r.Ts)); err != nil {
					lm.b.log.Warn("monitor: fragments", "err", err)
				}
			}
			return
		}
	}
	if lm.decode(raw, rec) {
		lm.m.Apply(rec)
	}
}

var endReasons = [...]string{"", monitor.EndFIN, monitor.EndRST, monitor.EndTimeout}

// decode turns a ring-buffer sample into rec (reusing its slices).
func (lm *LiveMonitor) decode(raw []byte, rec *monitor.Record) bool {
	if len(raw) < monRecSize {
		return false
	}
	r := (*mbxMonRec)(unsafe.Pointer(&raw[0]))
	events := rec.Events[:0]
	*rec = monitor.Record{
		ConnID: r.ConnId, Time: lm.monoOff + int64(r.Ts), Start: lm.monoOff + int64(r.Start),
		Flags: r.TcpFlags, Seq: r.Seq, Ack: r.Ack, DataSeq: r.DataSeq, FrameLen: int(r.PktLen),
		FromB: r.FromB != 0, ClientIsB: r.ClientIsB != 0, Midstream: r.Midstream != 0,
		NVLAN: int(r.Key.Nvlan), VLAN: r.Key.Vlan, IPv6: r.Key.Ipv6 != 0,
	}
	rec.A, rec.B = r.Key.ends()
	if r.EndReason < uint8(len(endReasons)) {
		rec.EndReason = endReasons[r.EndReason]
	}
	rec.States = [2]monitor.TCPState{monitor.TCPState(r.States[0]), monitor.TCPState(r.States[1])}
	for s := range 2 {
		rec.Sides[s] = monitor.RecordSide{Packets: r.Sides[s].Packets, Bytes: r.Sides[s].Bytes,
			Delivered: r.Sides[s].Delivered, Retransmissions: r.Sides[s].Rexmits}
	}
	if r.CapLen > 0 && len(raw) >= monRecSize+int(r.CapLen) {
		rec.Frame = raw[monRecSize : monRecSize+int(r.CapLen)]
		if r.Kind == monRecReinjected && lm.re.frame != nil {
			rec.Frame = lm.re.frame // whole, where the copy stops at MON_SNAP
		}
		if end := int(r.PayloadOff) + int(r.PayloadLen); r.PayloadLen > 0 && end <= len(rec.Frame) {
			rec.Payload = rec.Frame[r.PayloadOff:end]
		}
	}
	for i := 0; i < int(r.Nev) && i < len(r.Ev); i++ {
		e := r.Ev[i]
		ev := monitor.RecordEvent{Event: monitor.Event(e & 0xf), Side: monitor.Side((e >> 5) & 1),
			State: monitor.TCPState(e >> 8)}
		if e&0x10 != 0 {
			ev.Hook = monitor.HookRecv
		}
		events = append(events, ev)
	}
	rec.Events = events
	return true
}

// ends are the key's two endpoints.
func (k *mbxMonKey) ends() (a, b netip.AddrPort) {
	v6 := k.Ipv6 != 0
	return netip.AddrPortFrom(keyAddr(k.A, v6), k.Aport), netip.AddrPortFrom(keyAddr(k.B, v6), k.Bport)
}

func keyAddr(w [4]uint32, v6 bool) netip.Addr {
	b := (*[16]byte)(unsafe.Pointer(&w))
	if v6 {
		return netip.AddrFrom16(*b)
	}
	return netip.AddrFrom4([4]byte(b[12:16]))
}

// Sweep ends connections idle for IdleTimeout (raising CONN_END with reason
// "timeout") and deletes ended ones after Linger.
func (lm *LiveMonitor) Sweep() {
	now := uint64(monotonicNow())
	idle, linger := uint64(lm.opts.IdleTimeout), uint64(lm.opts.Linger)
	var (
		k     mbxMonKey
		c     mbxMonConn
		drop  []mbxMonKey
		quiet []uint64
		ended []mbxMonKey
	)
	it := lm.b.objs.MonConns.Iterate()
	for it.Next(&k, &c) {
		// Coarse clock: a tick behind the fine one at most.
		age := uint64(0)
		if now > c.Last {
			age = now - c.Last
		}
		switch {
		case c.EndReason != 0 && now > c.End && now-c.End > linger:
			drop = append(drop, k)
			quiet = append(quiet, c.Id)
		case c.EndReason == 0 && c.Id != 0 && age > idle:
			ended = append(ended, k)
		}
	}
	for i := range drop {
		_ = lm.b.objs.MonConns.Delete(&drop[i])
		_ = lm.b.objs.MonQuiet.Delete(&quiet[i])
	}
	for i := range ended {
		lm.timeout(&ended[i], now)
	}
}

// timeout ends one idle connection: marked in the map (under its lock),
// then CONN_END for the handlers.
func (lm *LiveMonitor) timeout(k *mbxMonKey, now uint64) {
	var c mbxMonConn
	if err := lm.b.objs.MonConns.LookupWithFlags(k, &c, ebpf.LookupLock); err != nil || c.EndReason != 0 {
		return
	}
	c.EndReason, c.End = 3, c.Last
	for s := range c.Side {
		c.Side[s].Delivered += uint64(c.Side[s].HeldBytes)
		c.Side[s].HeldBytes, c.Side[s].Nhold = 0, 0
	}
	if err := lm.b.objs.MonConns.Update(k, &c, ebpf.UpdateExist|ebpf.UpdateLock); err != nil {
		return
	}
	if lm.want&(1<<monitor.EvConnEnd) == 0 {
		return
	}
	rec := monitor.Record{ConnID: c.Id, Time: lm.monoOff + int64(now), Start: lm.monoOff + int64(c.Start),
		VLAN: k.Vlan, NVLAN: int(k.Nvlan), IPv6: k.Ipv6 != 0, ClientIsB: c.ClientIsB != 0, Midstream: c.Midstream != 0,
		EndReason: monitor.EndTimeout,
		States:    [2]monitor.TCPState{monitor.TCPState(c.Side[0].State), monitor.TCPState(c.Side[1].State)},
		Events: []monitor.RecordEvent{{Event: monitor.EvConnEnd, Hook: monitor.HookSend, Side: monitor.Client},
			{Event: monitor.EvConnEnd, Hook: monitor.HookRecv, Side: monitor.Server}}}
	rec.A, rec.B = k.ends()
	for s := range 2 {
		rec.Sides[s] = monitor.RecordSide{Packets: c.Side[s].Packets, Bytes: c.Side[s].Bytes,
			Delivered: c.Side[s].Delivered, Retransmissions: c.Side[s].Rexmits}
	}
	lm.mu.Lock()
	lm.m.Apply(&rec)
	lm.mu.Unlock()
}

// Stats reads the tracker's counters.
func (lm *LiveMonitor) Stats() (backend.MonitorStats, error) {
	s, err := lm.b.monitorStats()
	lm.mu.Lock()
	s.Reassembled, s.FragmentsUntracked = lm.re.done, s.FragmentsUntracked+lm.re.dropped
	lm.mu.Unlock()
	return s, err
}

// monitorStats sums the per-CPU monitor counters.
func (b *Backend) monitorStats() (backend.MonitorStats, error) {
	var per []mbxMonStats
	if err := b.objs.MonStat.Lookup(uint32(0), &per); err != nil {
		return backend.MonitorStats{}, err
	}
	var s backend.MonitorStats
	for _, p := range per {
		s.Packets += p.Packets
		s.TCP += p.Tcp
		s.Orphans += p.Orphans
		s.Filtered += p.Filtered
		s.Fragments += p.Fragments
		s.Malformed += p.Malformed
		s.Conns += p.Conns
		s.Records += p.Records
		s.Lost += p.Lost
		s.Full += p.Full
		s.ToGo += p.InlToGo
		s.Forwarded += p.InlForwarded
		s.Dropped += p.InlDropped
		s.NoSocket += p.InlNoSocket
		s.FragmentsUntracked += p.FragBig
	}
	return s, nil
}

// Snapshot lists every connection in the tracker's table (open and
// lingering) as connections built from the map: what live midstat
// prints, counters current to the last packet.
func (lm *LiveMonitor) Snapshot(fn func(c *monitor.Conn)) {
	var (
		k mbxMonKey
		c mbxMonConn
	)
	it := lm.b.objs.MonConns.Iterate()
	for it.Next(&k, &c) {
		if c.Id == 0 {
			continue
		}
		mc := &monitor.Conn{ID: c.Id, IPv6: k.Ipv6 != 0, Midstream: c.Midstream != 0,
			Start: lm.monoOff + int64(c.Start), Last: lm.monoOff + int64(c.Last)}
		a, b := k.ends()
		mc.Client, mc.Server = a, b
		if c.ClientIsB != 0 {
			mc.Client, mc.Server = b, a
		}
		if k.Nvlan > 0 {
			mc.VLAN = append([]uint16(nil), k.Vlan[:min(int(k.Nvlan), 2)]...)
		}
		if c.EndReason != 0 && int(c.EndReason) < len(endReasons) {
			mc.EndReason, mc.End = endReasons[c.EndReason], lm.monoOff+int64(c.End)
		}
		for s := range 2 {
			mc.Sides[s].State = monitor.TCPState(c.Side[s].State)
			mc.Sides[s].Packets = c.Side[s].Packets
			mc.Sides[s].Bytes = c.Side[s].Bytes
			mc.Sides[s].Retransmissions = c.Side[s].Rexmits
			mc.Sides[s].Flags = c.Side[s].Flags
			mc.SetStreamBytes(monitor.Side(s), c.Side[s].Delivered)
		}
		fn(mc)
	}
}

// Refresh brings the mirrored connections' states and counters up to
// date from the tracker's table (they move without records).
func (lm *LiveMonitor) Refresh() {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	lm.Snapshot(lm.m.Refresh)
}

func monotonicNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

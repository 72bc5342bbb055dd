//go:build dpdk

package dpdk

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/monitor"
)

// The stream monitor inline between DPDK port pairs (mOS's
// nic_forward_table; XDP's is bpf/inline.h): what a worker receives on an
// inline port goes through the Go tracker and its handlers, on the
// worker's own thread (mOS runs handlers on its cores too), and out of the
// peer port unless a handler dropped it; a replaced or edited frame leaves
// instead. The load balancer never sees these ports' packets.
//
// A TCP connection's first packet meets the stream filter (--monitor-filter),
// as in XDP: selected connections go through the tracker, the others are
// forwarded without it; non-TCP packets meet the filter one by one.
// Handlers' per-connection decisions (Conn.Drop; StopMonitoring on both
// sides) replace that: later packets of a dropped connection are dropped,
// a bypassed one's forwarded, without the tracker. A pure SYN is judged
// afresh (ports reused by a new connection), as in XDP. The decisions live
// in a table of at most maxInlineFlows connections, idle ones leaving after
// inlineIdle (XDP's is an LRU map). With several workers the tracker is
// one, behind a lock: a connection's two directions may arrive on two
// workers' queues.

type inlineAction uint8

const (
	inlineGo      inlineAction = iota // through the tracker
	inlineForward                     // filtered out, or bypassed by the handlers
	inlineDrop                        // dropped by a handler
)

const (
	maxInlineFlows = 1 << 16
	inlineIdle     = int64(300e9)
)

type inlineFlow struct {
	action inlineAction
	seen   int64
}

type inlineMonitor struct {
	m      *monitor.Monitor
	filter *filter.Filter
	mu     sync.Mutex
	flows  map[inlineKey]inlineFlow
	now    int64 // the packet being judged's time
	stats  struct {
		toGo, forwarded, dropped uint64 // as XDP's inline counters
		goForwarded, goDropped   uint64 // after the handlers
	}
	detach func()
	stopCh chan struct{}
	once   sync.Once
}

// inlineKey is a TCP connection's endpoints in a fixed order.
type inlineKey struct {
	a, b netip.AddrPort
}

func newInlineMonitor(m *monitor.Monitor, f *filter.Filter) *inlineMonitor {
	im := &inlineMonitor{m: m, filter: f, flows: map[inlineKey]inlineFlow{}, stopCh: make(chan struct{})}
	m.OnFlowAction(im.flowAction)
	return im
}

func (b *Backend) startInline(m *monitor.Monitor, opts backend.MonitorOptions) (backend.MonitorRun, error) {
	peer := make([]int, len(b.names))
	for i := range peer {
		peer[i] = -1
	}
	for _, p := range opts.Inline {
		var idx [2]int
		for k, name := range p {
			idx[k] = slices.Index(b.names, name)
			if idx[k] < 0 {
				return nil, fmt.Errorf("--inline %s:%s: %s is not a DPDK port of this mbx (%v)", p[0], p[1], name, b.names)
			}
			if peer[idx[k]] >= 0 {
				return nil, fmt.Errorf("--inline %s:%s: %s is already in a pair", p[0], p[1], name)
			}
		}
		if idx[0] == idx[1] {
			return nil, fmt.Errorf("--inline %s:%s: a port cannot be its own peer", p[0], p[1])
		}
		peer[idx[0]], peer[idx[1]] = idx[1], idx[0]
	}
	im := newInlineMonitor(m, opts.Filter)
	im.detach = func() { b.each(func(l *lane) { l.w.SetInline(nil, nil) }) }
	b.each(func(l *lane) { l.w.SetInline(peer, im.judge) })
	return im, nil
}

// judge runs on a worker for each packet received on an inline port: drop
// it, or forward out (the frame itself unless a handler replaced it).
func (im *inlineMonitor) judge(frame []byte, now time.Time) (drop bool, out []byte) {
	key, syn, tcp := inlineKeyOf(frame)
	im.mu.Lock()
	defer im.mu.Unlock()
	im.now = now.UnixNano()
	action := inlineGo
	if tcp {
		f, known := im.flows[key]
		switch {
		case syn || !known:
			action = im.selected(frame)
			im.remember(key, action)
		default:
			action = f.action
			if im.now-f.seen > 1e9 {
				im.remember(key, action)
			}
		}
	} else {
		action = im.selected(frame)
	}
	switch action {
	case inlineDrop:
		im.stats.dropped++
		return true, nil
	case inlineForward:
		im.stats.forwarded++
		return false, frame
	}
	im.stats.toGo++
	im.m.Process(monitor.LinkEthernet, frame, now)
	drop, out = im.m.PacketVerdict()
	if drop {
		im.stats.goDropped++
	} else {
		im.stats.goForwarded++
	}
	return drop, out
}

// selected is the stream filter's word on a packet: through the tracker,
// or forwarded.
func (im *inlineMonitor) selected(frame []byte) inlineAction {
	if im.filter == nil {
		return inlineGo
	}
	if ok, _ := im.filter.Match(frame); ok {
		return inlineGo
	}
	return inlineForward
}

// remember records a connection's action (a full table keeps the decisions
// it has: the filter decides again on each packet).
func (im *inlineMonitor) remember(k inlineKey, a inlineAction) {
	if _, ok := im.flows[k]; !ok && len(im.flows) >= maxInlineFlows {
		return
	}
	im.flows[k] = inlineFlow{a, im.now}
}

// flowAction records a handler's decision for the connection's later
// packets (on the monitor's goroutine: a worker's, in judge, under mu).
func (im *inlineMonitor) flowAction(c *monitor.Conn, a monitor.FlowAction) {
	act := inlineForward
	if a == monitor.FlowDrop {
		act = inlineDrop
	}
	k := orderedKey(c.Client, c.Server)
	if len(im.flows) >= maxInlineFlows {
		im.sweep(im.now)
	}
	im.flows[k] = inlineFlow{act, im.now}
}

// sweep forgets connections idle for inlineIdle.
func (im *inlineMonitor) sweep(now int64) {
	for k, f := range im.flows {
		if now-f.seen > inlineIdle {
			delete(im.flows, k)
		}
	}
}

func orderedKey(a, b netip.AddrPort) inlineKey {
	if b.Compare(a) < 0 {
		a, b = b, a
	}
	return inlineKey{a, b}
}

// inlineKeyOf is a TCP segment's connection key (IPv4 or IPv6, no
// extension headers) and whether it is a pure SYN.
func inlineKeyOf(frame []byte) (k inlineKey, syn, ok bool) {
	if len(frame) < 14 {
		return k, false, false
	}
	var src, dst netip.Addr
	var l4 []byte
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		ip := frame[14:]
		if len(ip) < 20 || ip[9] != 6 || binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 || len(ip) < int(ip[0]&0xf)*4+20 {
			return k, false, false
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		l4 = ip[int(ip[0]&0xf)*4:]
	case 0x86dd:
		ip := frame[14:]
		if len(ip) < 60 || ip[6] != 6 {
			return k, false, false
		}
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		l4 = ip[40:]
	default:
		return k, false, false
	}
	sport, dport := binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:])
	syn = l4[13]&0x12 == 0x02 // SYN without ACK
	return orderedKey(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)), syn, true
}

// Run moves the monitor's clock while traffic pauses (its timers and idle
// sweep) until Stop; handlers run on the workers.
func (im *inlineMonitor) Run() error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			im.mu.Lock()
			im.m.Tick(now)
			im.sweep(now.UnixNano())
			im.mu.Unlock()
		case <-im.stopCh:
			return nil
		}
	}
}

// Stop takes the ports out of inline mode: their packets go to the
// datapath again.
func (im *inlineMonitor) Stop() {
	im.once.Do(func() {
		if im.detach != nil {
			im.detach()
		}
		close(im.stopCh)
	})
}

// Refresh: the Go tracker is the monitor's own; nothing to mirror.
func (im *inlineMonitor) Refresh() {}

// Snapshot calls fn with a copy of every connection the monitor holds.
func (im *inlineMonitor) Snapshot(fn func(c *monitor.Conn)) { snapshotConns(&im.mu, im.m, fn) }

// Stats: the flow table's verdicts as XDP's (forwarded, dropped, sent to
// Go), and the tracker's.
func (im *inlineMonitor) Stats() (backend.MonitorStats, error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	st := trackerStats(im.m.Stats())
	st.ToGo, st.Forwarded, st.Dropped = im.stats.toGo, im.stats.forwarded, im.stats.dropped
	st.GoForwarded, st.GoDropped = im.stats.goForwarded, im.stats.goDropped
	return st, nil
}

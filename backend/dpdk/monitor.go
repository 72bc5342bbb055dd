//go:build dpdk

package dpdk

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/monitor"
)

// The stream monitor on DPDK ports is the Go tracker itself (monitor/):
// the worker copies each packet on a monitored port's wire (received,
// before translation, and sent, after it: both directions, as a capture
// of that port would show them) into a bounded queue, and the monitor's
// goroutine tracks it. A full
// queue loses the packet for the monitor (counted), never for forwarding.

const (
	monQueue = 4096 // packets waiting for the tracker
	monSnap  = 2048 // bytes of each packet kept
)

type monFrame struct {
	buf []byte
	n   int
	t   time.Time
}

type liveMonitor struct {
	b      *Backend
	m      *monitor.Monitor
	ports  map[int]bool
	queue  chan monFrame
	free   chan []byte
	lost   atomic.Uint64
	mu     sync.Mutex // the monitor between Run and readers
	stopCh chan struct{}
	once   sync.Once
}

// StartMonitor is backend.MonitorPlane's: a passive monitor on DPDK ports.
func (b *Backend) StartMonitor(m *monitor.Monitor, opts backend.MonitorOptions) (backend.MonitorRun, error) {
	switch {
	case len(opts.Inline) > 0:
		return b.startInline(m, opts)
	case opts.Sample != 0:
		return nil, errors.New("--monitor-sample is for the xdp backend (on dpdk the Go tracker sees every packet)")
	case len(opts.Ifaces) == 0:
		return nil, errors.New("the stream monitor needs a port (--monitor PORT)")
	}
	lm := &liveMonitor{b: b, m: m, ports: map[int]bool{}, queue: make(chan monFrame, monQueue),
		free: make(chan []byte, monQueue), stopCh: make(chan struct{})}
	for _, name := range opts.Ifaces {
		i := slices.Index(b.names, name)
		if i < 0 {
			return nil, fmt.Errorf("monitor on %s: not a DPDK port of this mbx (%v)", name, b.names)
		}
		lm.ports[i] = true
	}
	for range monQueue {
		lm.free <- make([]byte, monSnap)
	}
	b.each(func(l *lane) { l.w.Observe = lm.observe })
	return lm, nil
}

// observe runs on the worker for every received packet.
func (lm *liveMonitor) observe(port int, frame []byte, now time.Time) {
	if !lm.ports[port] {
		return
	}
	select {
	case buf := <-lm.free:
		n := copy(buf, frame)
		select {
		case lm.queue <- monFrame{buf, n, now}:
		default:
			lm.free <- buf
			lm.lost.Add(1)
		}
	default:
		lm.lost.Add(1)
	}
}

// Run tracks queued packets until Stop; handlers run here.
func (lm *liveMonitor) Run() error {
	for {
		select {
		case f := <-lm.queue:
			lm.mu.Lock()
			lm.m.Process(monitor.LinkEthernet, f.buf[:f.n], f.t)
			lm.mu.Unlock()
			lm.free <- f.buf
		case <-lm.stopCh:
			return nil
		}
	}
}

// Stop detaches the tracker from the worker.
func (lm *liveMonitor) Stop() {
	lm.once.Do(func() {
		lm.b.each(func(l *lane) { l.w.Observe = nil })
		close(lm.stopCh)
	})
}

// Refresh: the Go tracker is the monitor's own; nothing to mirror.
func (lm *liveMonitor) Refresh() {}

// Snapshot calls fn with a copy of every connection the monitor holds.
func (lm *liveMonitor) Snapshot(fn func(c *monitor.Conn)) { snapshotConns(&lm.mu, lm.m, fn) }

// snapshotConns copies m's connections under mu, then calls fn on each
// copy without it (fn may take its time).
func snapshotConns(mu *sync.Mutex, m *monitor.Monitor, fn func(c *monitor.Conn)) {
	mu.Lock()
	var conns []monitor.Conn
	m.Conns(func(c *monitor.Conn) { conns = append(conns, *c) })
	mu.Unlock()
	for i := range conns {
		fn(&conns[i])
	}
}

// trackerStats are the Go tracker's counters as a backend reports them.
func trackerStats(s monitor.Stats) backend.MonitorStats {
	return backend.MonitorStats{Packets: s.Packets, TCP: s.TCP, Orphans: s.Orphans, Filtered: s.Filtered,
		Fragments: s.Fragments, Malformed: s.Malformed, Conns: s.Conns, Reassembled: s.Reassembled}
}

// Stats are the Go tracker's counters and the packets it lost.
func (lm *liveMonitor) Stats() (backend.MonitorStats, error) {
	lm.mu.Lock()
	st := trackerStats(lm.m.Stats())
	lm.mu.Unlock()
	st.Lost = lm.lost.Load()
	return st, nil
}

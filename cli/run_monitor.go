package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/monitor"
	"github.com/mbx-net/mbx/telemetry/connspan"
)

// liveMonitor is what `mbx run --monitor` will start, validated before
// anything is attached.
type liveMonitor struct {
	opts       backend.MonitorOptions
	log        *os.File
	traceConns float64
	// goTracker: the backend tracks with the Go tracker (dpdk), which then
	// applies the stream filter itself; its ports are not attached like
	// interfaces.
	goTracker bool
}

func parseLiveMonitor(c *ucli.Context) (*liveMonitor, error) {
	ifaces := c.StringSlice("monitor")
	pairs, err := parseInlinePairs(c.StringSlice("inline"))
	if err != nil {
		return nil, err
	}
	switch {
	case len(ifaces) == 0 && len(pairs) == 0:
		if c.String("monitor-filter") != "" || c.String("monitor-log") != "" || c.IsSet("trace-conns") || c.IsSet("monitor-sample") {
			return nil, fmt.Errorf("--monitor-filter, --monitor-log, --monitor-sample and --trace-conns need --monitor IF or --inline IF1:IF2")
		}
		return nil, nil
	case len(ifaces) > 0 && len(pairs) > 0:
		return nil, fmt.Errorf("--monitor and --inline: the stream monitor is either passive or inline, not both")
	}
	lm := &liveMonitor{opts: backend.MonitorOptions{Ifaces: ifaces, Inline: pairs}}
	if c.IsSet("monitor-sample") {
		lm.opts.Sample = c.Float64("monitor-sample")
		if !(lm.opts.Sample > 0 && lm.opts.Sample < 1) {
			return nil, fmt.Errorf("--monitor-sample %v: want a fraction, 0 < RATE < 1", lm.opts.Sample)
		}
		if len(pairs) > 0 {
			return nil, fmt.Errorf("--monitor-sample is for a passive monitor (--monitor IF), not --inline")
		}
	}
	if c.IsSet("trace-conns") {
		lm.traceConns = c.Float64("trace-conns")
		if !(lm.traceConns > 0 && lm.traceConns <= 1) {
			return nil, fmt.Errorf("--trace-conns %v: want a fraction, 0 < RATE <= 1", lm.traceConns)
		}
	}
	if expr := c.String("monitor-filter"); expr != "" {
		f, err := filter.Compile(expr)
		if err != nil {
			return nil, fmt.Errorf("--monitor-filter: %w", err)
		}
		if _, err := f.XDPFunction(); err != nil {
			return nil, fmt.Errorf("--monitor-filter: %w", err)
		}
		lm.opts.Filter = f
	}
	if path := c.String("monitor-log"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("--monitor-log: %w", err)
		}
		lm.log = f
	}
	return lm, nil
}

// parseInlinePairs reads --inline IF1:IF2 values (mOS's nic_forward_table).
func parseInlinePairs(vals []string) ([][2]string, error) {
	var pairs [][2]string
	seen := map[string]bool{}
	for _, v := range vals {
		a, b, ok := strings.Cut(v, ":")
		if !ok || a == "" || b == "" || strings.Contains(b, ":") {
			return nil, fmt.Errorf("--inline %q: want IF1:IF2", v)
		}
		if a == b {
			return nil, fmt.Errorf("--inline %q: an interface cannot be its own peer", v)
		}
		for _, i := range []string{a, b} {
			if seen[i] {
				return nil, fmt.Errorf("--inline %q: %s is already in a pair", v, i)
			}
			seen[i] = true
		}
		pairs = append(pairs, [2]string{a, b})
	}
	return pairs, nil
}

// withIfaces adds the monitor's interfaces to those mbx attaches to.
func (lm *liveMonitor) withIfaces(ifaces []string) []string {
	if lm == nil || lm.goTracker {
		return ifaces
	}
	out := append([]string(nil), ifaces...)
	mine := slices.Clone(lm.opts.Ifaces)
	for _, p := range lm.opts.Inline {
		mine = append(mine, p[0], p[1])
	}
	for _, m := range mine {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// start runs the monitor in the daemon: with --monitor-log, its connection
// events are written as JSON Lines (mbx monitor --events' format).
func (lm *liveMonitor) start(d *control.Daemon) error {
	opts := monitor.Options{NoBuffer: true}
	if f := lm.opts.Filter; f != nil && (len(lm.opts.Inline) > 0 || lm.goTracker) {
		// Inline, the Go tracker sees the filtered connections' packets
		// themselves; the filter also judges a SYN that reuses ports.
		opts.Filter = func(p *monitor.Packet) bool { ok, _ := f.Match(p.Frame); return ok }
	}
	m := monitor.New(opts)
	if lm.log != nil {
		logConnEvents(m, lm.log)
	}
	if lm.traceConns > 0 {
		if _, err := connspan.Attach(m, lm.traceConns); err != nil {
			return err
		}
	}
	return d.StartMonitor(m, lm.opts)
}

func (lm *liveMonitor) close() {
	if lm != nil && lm.log != nil {
		lm.log.Close()
	}
}

// logConnEvents writes m's connection events to w. Handlers run on the
// monitor's one goroutine: no locking.
func logConnEvents(m *monitor.Monitor, w io.Writer) {
	enc := json.NewEncoder(w)
	var n uint64
	h := func(conn *monitor.Conn, side monitor.Side, ev monitor.Event, hook monitor.Hook) {
		n++
		r := eventRecordOf(m, ev, hook, conn, side)
		r.Packet = n
		_ = enc.Encode(&r)
	}
	for _, ev := range []monitor.Event{monitor.EvConnStart, monitor.EvStateChange, monitor.EvRexmit, monitor.EvConnEnd} {
		m.On(ev, monitor.HookSend, func(c *monitor.Conn, s monitor.Side, ev monitor.Event) { h(c, s, ev, monitor.HookSend) })
		if ev == monitor.EvStateChange {
			m.On(ev, monitor.HookRecv, func(c *monitor.Conn, s monitor.Side, ev monitor.Event) { h(c, s, ev, monitor.HookRecv) })
		}
	}
}

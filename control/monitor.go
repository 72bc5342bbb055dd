package control

import (
	"errors"
	"sort"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/monitor"
	"github.com/mbx-net/mbx/monitor/midstat"
)

// MonitorStatus is the live stream monitor's table (`mbx stat`): every
// connection in the data plane's tracker, open and recently ended.
type MonitorStatus struct {
	Ifaces []string             `json:"ifaces"` // passive: IF; inline: IF1:IF2
	Inline bool                 `json:"inline"`
	Stats  backend.MonitorStats `json:"stats"`
	Conns  []midstat.Row        `json:"conns"`
}

type monitorState struct {
	filter string // the stream filter, "" for none
	m      *monitor.Monitor
	run    backend.MonitorRun
	ifaces []string
	inline bool
	done   chan error
}

// StartMonitor runs the data plane's tracker for m (whose handlers run on
// the daemon's monitor goroutine) until Shutdown.
func (d *Daemon) StartMonitor(m *monitor.Monitor, opts backend.MonitorOptions) error {
	mp, ok := d.be.(backend.MonitorPlane)
	if !ok {
		return errors.New("the " + d.beName + " backend has no stream monitor")
	}
	run, err := mp.StartMonitor(m, opts)
	if err != nil {
		return err
	}
	st := &monitorState{m: m, run: run, ifaces: opts.Ifaces, inline: len(opts.Inline) > 0, done: make(chan error, 1)}
	if opts.Filter != nil {
		st.filter = opts.Filter.Expr
	}
	for _, p := range opts.Inline {
		st.ifaces = append(st.ifaces, p[0]+":"+p[1])
	}
	go func() { st.done <- run.Run() }()
	d.mu.Lock()
	d.monitor = st
	d.mu.Unlock()
	d.log.Info("stream monitor running", "ifaces", st.ifaces, "inline", st.inline)
	return nil
}

// MonitorFilter is the running stream monitor's filter expression ("" for
// none): a capture's copy of the datapath must keep it.
func (d *Daemon) MonitorFilter() MonitorFilter {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.monitor == nil {
		return MonitorFilter{}
	}
	return MonitorFilter{Filter: d.monitor.filter}
}

// MonitorFilter is GET /v1/monitor/filter's reply.
type MonitorFilter struct {
	Filter string `json:"filter"`
}

// MonitorStatus reads the live monitor's table.
func (d *Daemon) MonitorStatus() (*MonitorStatus, error) {
	d.mu.Lock()
	st := d.monitor
	d.mu.Unlock()
	if st == nil {
		return nil, errors.New("no stream monitor is running (mbx run --monitor IF, or --inline IF1:IF2)")
	}
	stats, err := st.run.Stats()
	if err != nil {
		return nil, err
	}
	out := &MonitorStatus{Ifaces: st.ifaces, Inline: st.inline, Stats: stats, Conns: []midstat.Row{}}
	var conns []*monitor.Conn
	st.run.Snapshot(func(c *monitor.Conn) { conns = append(conns, c) })
	sort.Slice(conns, func(i, j int) bool { return conns[i].ID < conns[j].ID })
	for _, c := range conns {
		out.Conns = append(out.Conns, midstat.RowOf(c))
	}
	return out, nil
}

// stopMonitor ends the monitor goroutine, then the connections still open
// (CONN_END, reason "open").
func (d *Daemon) stopMonitor() error {
	d.mu.Lock()
	st := d.monitor
	d.monitor = nil
	d.mu.Unlock()
	if st == nil {
		return nil
	}
	st.run.Stop()
	err := <-st.done
	st.run.Refresh()
	st.m.Close()
	return err
}

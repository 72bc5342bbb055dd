package control

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/lb"
)

// RegisterMetrics publishes the daemon's counters as observable instruments
// on m. One callback per collection reads a Status (the datapath's maps and
// the last sweep): Go does no work per packet.
func (d *Daemon) RegisterMetrics(m metric.Meter) error {
	var reg instruments
	i := &reg
	var err error
	counter := func(name, help string) metric.Int64ObservableCounter {
		c, e := m.Int64ObservableCounter(name, metric.WithDescription(help))
		err = firstErr(err, e)
		return c
	}
	gauge := func(name, help string) metric.Int64ObservableGauge {
		g, e := m.Int64ObservableGauge(name, metric.WithDescription(help))
		err = firstErr(err, e)
		return g
	}
	i.svcInfo = gauge("mbx_service_info", "A virtual service (value 1), with its scheduler.")
	i.svcConns = counter("mbx_service_connections", "Connections scheduled to the virtual service.")
	i.svcPkts = counter("mbx_service_packets", "Packets of the virtual service, by direction (in: client to real server).")
	i.svcBytes = counter("mbx_service_bytes", "Bytes of the virtual service, by direction.")
	i.realConns = counter("mbx_real_connections", "Connections the scheduler picked this real server for.")
	i.realActive = gauge("mbx_real_active_connections", "Established connections to the real server at the last sweep.")
	i.realInactive = gauge("mbx_real_inactive_connections", "Connections to the real server in other states at the last sweep.")
	i.realPkts = counter("mbx_real_packets", "Packets to and from the real server, by direction.")
	i.realBytes = counter("mbx_real_bytes", "Bytes to and from the real server, by direction.")
	i.realWeight = gauge("mbx_real_weight", "The real server's configured weight.")
	i.realUp = gauge("mbx_real_health_up", "1 if the real server's health check passes, 0 if not (checked real servers only).")
	i.realTrans = counter("mbx_real_health_transitions", "Health state changes of the real server.")
	i.laddrUsed = gauge("mbx_laddr_ports_used", "Local ports in use on the local address (Full-NAT connections through it).")
	i.laddrFree = gauge("mbx_laddr_ports_free", "Local ports still free on the local address, over all its real servers.")
	i.laddrConflicts = counter("mbx_laddr_port_conflicts", "Local-port candidates that were taken when a connection probed for one.")
	i.ifPkts = counter("mbx_xdp_packets", "Packets received on the interface, by XDP verdict.")
	i.drops = counter("mbx_drops", "Packets the datapath dropped, by reason.")
	i.events = counter("mbx_datapath_events", "Datapath events other than drops (new connections, fib fallbacks, ...).")
	i.entries = gauge("mbx_conntable_entries", "Connection-table entries at the last sweep (two per connection).")
	i.capacity = gauge("mbx_conntable_capacity", "Connection-table size in entries.")
	i.evicted = counter("mbx_conntable_evictions", "Live entries the full table evicted (estimated at each sweep).")
	i.workerPkts = counter("mbx_worker_packets", "A polling worker's packets (dpdk), by event: rx, handed (to the connection's owner), taken (from the others), hand_dropped, tx_dropped, to_kernel, from_kernel.")
	if err != nil {
		return err
	}
	if err := d.registerBrickMetrics(m); err != nil {
		return err
	}
	if err := d.registerMonitorMetrics(m); err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st, err := d.Status()
		if err != nil {
			return err
		}
		reg.observe(o, st)
		return nil
	}, reg.all()...)
	return err
}

type instruments struct {
	svcInfo, realActive, realInactive, realWeight, realUp, laddrUsed, laddrFree, entries, capacity                         metric.Int64ObservableGauge
	svcConns, svcPkts, svcBytes, realConns, realPkts, realBytes, realTrans, laddrConflicts, ifPkts, drops, events, evicted metric.Int64ObservableCounter
	workerPkts                                                                                                             metric.Int64ObservableCounter
}

func (i *instruments) all() []metric.Observable {
	return []metric.Observable{i.svcInfo, i.realActive, i.realInactive, i.realWeight, i.realUp, i.laddrUsed, i.laddrFree,
		i.entries, i.capacity, i.svcConns, i.svcPkts, i.svcBytes, i.realConns, i.realPkts, i.realBytes, i.realTrans,
		i.laddrConflicts, i.ifPkts, i.drops, i.events, i.evicted, i.workerPkts}
}

func (i *instruments) observe(o metric.Observer, st *Status) {
	in, out := attribute.String("direction", "in"), attribute.String("direction", "out")
	for _, s := range st.Services {
		svc := []attribute.KeyValue{
			attribute.String("protocol", strings.ToLower(s.Key.Proto.String())),
			attribute.String("service", serviceLabel(s.Key)),
		}
		o.ObserveInt64(i.svcInfo, 1, metric.WithAttributes(append(slices.Clip(svc), attribute.String("scheduler", s.Scheduler))...))
		observeTraffic(o, i.svcConns, i.svcPkts, i.svcBytes, s.Stats, svc, in, out)
		endpoints := 0
		for _, r := range s.RealStats {
			endpoints++
			real := append(slices.Clip(svc), attribute.String("real", r.AddrPort().String()))
			ra := metric.WithAttributes(real...)
			observeTraffic(o, i.realConns, i.realPkts, i.realBytes, r.Counters, real, in, out)
			o.ObserveInt64(i.realActive, int64(r.Active), ra)
			o.ObserveInt64(i.realInactive, int64(r.Inactive), ra)
			o.ObserveInt64(i.realWeight, int64(r.Weight), ra)
			if r.Health != nil {
				o.ObserveInt64(i.realUp, b2i(r.Health.Up), ra)
				o.ObserveInt64(i.realTrans, int64(r.Health.Transitions), ra)
			}
		}
		for _, l := range s.LaddrStats {
			la := metric.WithAttributes(append(slices.Clip(svc), attribute.String("laddr", l.Addr.String()))...)
			o.ObserveInt64(i.laddrUsed, int64(l.Conns), la)
			o.ObserveInt64(i.laddrFree, max(0, int64(st.LocalPorts)*int64(endpoints)-int64(l.Conns)), la)
			o.ObserveInt64(i.laddrConflicts, int64(l.Conflicts), la)
		}
	}
	for name, v := range st.Ifaces {
		for verdict, n := range map[string]uint64{"aborted": v.Aborted, "drop": v.Drop, "pass": v.Pass, "tx": v.Tx, "redirect": v.Redirect} {
			o.ObserveInt64(i.ifPkts, int64(n), metric.WithAttributes(attribute.String("interface", name), attribute.String("verdict", verdict)))
		}
	}
	for name, v := range st.Datapath {
		switch {
		case name == "rx" || name == "tx" || name == "redirect":
			// per interface and verdict above
		case strings.HasPrefix(name, "drop_"):
			o.ObserveInt64(i.drops, int64(v), metric.WithAttributes(attribute.String("reason", strings.TrimPrefix(name, "drop_"))))
		default:
			o.ObserveInt64(i.events, int64(v), metric.WithAttributes(attribute.String("event", name)))
		}
	}
	for _, w := range st.Workers {
		for ev, n := range map[string]uint64{"rx": w.Rx, "handed": w.Handed, "taken": w.Taken, "hand_dropped": w.HandDropped,
			"tx_dropped": w.TxDropped, "to_kernel": w.ToKernel, "from_kernel": w.FromKernel} {
			o.ObserveInt64(i.workerPkts, int64(n), metric.WithAttributes(attribute.Int("worker", w.Worker), attribute.String("event", ev)))
		}
	}
	o.ObserveInt64(i.entries, int64(st.Entries))
	o.ObserveInt64(i.capacity, int64(st.ConnsMax)*2)
	o.ObserveInt64(i.evicted, int64(st.Evicted))
}

func observeTraffic(o metric.Observer, conns, pkts, bytes metric.Int64ObservableCounter, c backend.Counters, attrs []attribute.KeyValue, in, out attribute.KeyValue) {
	attrs = slices.Clip(attrs) // each append below gets its own array
	o.ObserveInt64(conns, int64(c.Conns), metric.WithAttributes(attrs...))
	o.ObserveInt64(pkts, int64(c.InPkts), metric.WithAttributes(append(attrs, in)...))
	o.ObserveInt64(pkts, int64(c.OutPkts), metric.WithAttributes(append(attrs, out)...))
	o.ObserveInt64(bytes, int64(c.InBytes), metric.WithAttributes(append(attrs, in)...))
	o.ObserveInt64(bytes, int64(c.OutBytes), metric.WithAttributes(append(attrs, out)...))
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// registerBrickMetrics exports `mbx bricks stats` per brick and output.
func (d *Daemon) registerBrickMetrics(m metric.Meter) error {
	var err error
	counter := func(name, help string) metric.Int64ObservableCounter {
		c, e := m.Int64ObservableCounter(name, metric.WithDescription(help))
		err = firstErr(err, e)
		return c
	}
	pkts := counter("mbx_brick_packets", "Packets the brick (or, with output, the brick's output) sent on.")
	bytes := counter("mbx_brick_bytes", "Bytes the brick (or its output) sent on.")
	drops := counter("mbx_brick_drops", "Sends that failed (an output gone).")
	skipped := counter("mbx_brick_skipped", "Packets a Filter brick did not match (left to the kernel).")
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st, err := d.Bricks()
		if err != nil {
			return err
		}
		for _, r := range st.Stats {
			a := metric.WithAttributes(attribute.String("brick", r.Brick), attribute.String("output", r.Output))
			o.ObserveInt64(pkts, int64(r.Pkts), a)
			o.ObserveInt64(bytes, int64(r.Bytes), a)
			o.ObserveInt64(drops, int64(r.Drops), a)
			o.ObserveInt64(skipped, int64(r.Skipped), a)
		}
		return nil
	}, pkts, bytes, drops, skipped)
	return err
}

// serviceLabel is a service's "service" label: VIP:port, or an SNAT match.
func serviceLabel(k lb.ServiceKey) string {
	if k.IsMatch() {
		return "match:" + k.Match
	}
	return netip.AddrPortFrom(k.Addr, k.Port).String()
}

// registerMonitorMetrics exports the stream monitor's counters (mbx stat's
// summary) and the events it raised to handlers, by type.
func (d *Daemon) registerMonitorMetrics(m metric.Meter) error {
	var err error
	counter := func(name, help string) metric.Int64ObservableCounter {
		c, e := m.Int64ObservableCounter(name, metric.WithDescription(help))
		err = firstErr(err, e)
		return c
	}
	pkts := counter("mbx_monitor_packets", "Packets the stream monitor saw, by kind (tcp, orphan, filtered, fragment, malformed).")
	conns := counter("mbx_monitor_connections", "Connections the stream monitor started tracking.")
	lost := counter("mbx_monitor_reports_lost", "Reports the data plane could not send to Go (ring buffer full).")
	events := counter("mbx_monitor_events", "Events the stream monitor raised to handlers, by type.")
	inline := counter("mbx_monitor_inline_packets", "Inline mode: packets by path (xdp_forwarded, xdp_dropped, to_go, no_socket, go_forwarded, go_dropped, tx_full).")
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		d.mu.Lock()
		st := d.monitor
		d.mu.Unlock()
		if st == nil {
			return nil
		}
		s, err := st.run.Stats()
		if err != nil {
			return err
		}
		for kind, v := range map[string]uint64{"tcp": s.TCP, "orphan": s.Orphans, "filtered": s.Filtered, "fragment": s.Fragments, "malformed": s.Malformed} {
			o.ObserveInt64(pkts, int64(v), metric.WithAttributes(attribute.String("kind", kind)))
		}
		o.ObserveInt64(conns, int64(s.Conns))
		o.ObserveInt64(lost, int64(s.Lost))
		for ev, v := range st.m.EventCounts() {
			o.ObserveInt64(events, int64(v), metric.WithAttributes(attribute.String("event", ev.String())))
		}
		if st.inline {
			for path, v := range map[string]uint64{"xdp_forwarded": s.Forwarded, "xdp_dropped": s.Dropped, "to_go": s.ToGo,
				"no_socket": s.NoSocket, "go_forwarded": s.GoForwarded, "go_dropped": s.GoDropped, "tx_full": s.TxFull} {
				o.ObserveInt64(inline, int64(v), metric.WithAttributes(attribute.String("path", path)))
			}
		}
		return nil
	}, pkts, conns, lost, events, inline)
	return err
}

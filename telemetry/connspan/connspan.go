// Package connspan turns a stream monitor's connection events into
// OpenTelemetry spans: one span per sampled TCP connection, from its first
// packet to its end, with each side's state changes and retransmissions as
// span events. It hooks the monitor's handlers, so it costs the datapath
// nothing beyond the connection events the monitor already reports, and
// sampling is per connection (deterministic on its id), decided once.
package connspan

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/mbx-net/mbx/monitor"
)

// Recorder keeps the open spans of sampled connections. Its handlers run
// on the monitor's goroutine.
type Recorder struct {
	tracer    trace.Tracer
	threshold uint64
	open      map[uint64]trace.Span
	// Started and Ended count spans.
	Started, Ended uint64
}

// Attach records spans for a fraction rate (0 < rate <= 1) of m's
// connections with the global tracer provider.
func Attach(m *monitor.Monitor, rate float64) (*Recorder, error) {
	if !(rate > 0 && rate <= 1) {
		return nil, fmt.Errorf("connection trace rate %v: want 0 < rate <= 1", rate)
	}
	r := &Recorder{
		tracer: otel.GetTracerProvider().Tracer("github.com/mbx-net/mbx/telemetry/connspan"),
		open:   map[uint64]trace.Span{},
	}
	if rate == 1 {
		r.threshold = ^uint64(0)
	} else {
		r.threshold = uint64(rate * (1 << 63) * 2)
	}
	m.On(monitor.EvConnStart, monitor.HookSend, r.start)
	for _, h := range []monitor.Hook{monitor.HookSend, monitor.HookRecv} {
		m.On(monitor.EvStateChange, h, r.stateChange)
	}
	m.On(monitor.EvRexmit, monitor.HookSend, r.rexmit)
	m.On(monitor.EvConnEnd, monitor.HookSend, r.end)
	return r, nil
}

// sampled spreads ids over the 64-bit range (Fibonacci hashing) and keeps
// those under the threshold.
func (r *Recorder) sampled(id uint64) bool { return id*0x9e3779b97f4a7c15 <= r.threshold }

func (r *Recorder) start(c *monitor.Conn, _ monitor.Side, _ monitor.Event) {
	if !r.sampled(c.ID) {
		return
	}
	attrs := []attribute.KeyValue{
		attribute.Int64("mbx.conn.id", int64(c.ID)),
		attribute.String("network.transport", "tcp"),
		attribute.String("mbx.client", c.Client.String()),
		attribute.String("mbx.server", c.Server.String()),
		attribute.Bool("mbx.midstream", c.Midstream),
	}
	if len(c.VLAN) > 0 {
		vl := make([]int64, len(c.VLAN))
		for i, v := range c.VLAN {
			vl[i] = int64(v)
		}
		attrs = append(attrs, attribute.Int64Slice("mbx.vlan", vl))
	}
	_, span := r.tracer.Start(context.Background(), "mbx.conn", trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithTimestamp(time.Unix(0, c.Start)), trace.WithAttributes(attrs...))
	r.open[c.ID] = span
	r.Started++
}

func (r *Recorder) stateChange(c *monitor.Conn, side monitor.Side, _ monitor.Event) {
	if span, ok := r.open[c.ID]; ok {
		span.AddEvent("state_change", trace.WithTimestamp(time.Unix(0, c.Last)), trace.WithAttributes(
			attribute.String("mbx.side", side.String()), attribute.String("mbx.state", c.Sides[side].State.String())))
	}
}

func (r *Recorder) rexmit(c *monitor.Conn, side monitor.Side, _ monitor.Event) {
	if span, ok := r.open[c.ID]; ok {
		span.AddEvent("retransmission", trace.WithTimestamp(time.Unix(0, c.Last)), trace.WithAttributes(
			attribute.String("mbx.side", side.String())))
	}
}

func (r *Recorder) end(c *monitor.Conn, _ monitor.Side, _ monitor.Event) {
	span, ok := r.open[c.ID]
	if !ok {
		return
	}
	delete(r.open, c.ID)
	cl, sv := &c.Sides[monitor.Client], &c.Sides[monitor.Server]
	span.SetAttributes(
		attribute.String("mbx.end_reason", c.EndReason),
		attribute.String("mbx.client.state", cl.State.String()),
		attribute.String("mbx.server.state", sv.State.String()),
		attribute.Int64Slice("mbx.packets", []int64{int64(cl.Packets), int64(sv.Packets)}),
		attribute.Int64Slice("mbx.stream_bytes", []int64{int64(c.StreamBytes(monitor.Client)), int64(c.StreamBytes(monitor.Server))}),
		attribute.Int64Slice("mbx.retransmissions", []int64{int64(cl.Retransmissions), int64(sv.Retransmissions)}),
	)
	at := c.End
	if at == 0 {
		at = c.Last
	}
	span.End(trace.WithTimestamp(time.Unix(0, at)))
	r.Ended++
}

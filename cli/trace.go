package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	ucli "github.com/urfave/cli/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/lb"
	"github.com/mbx-net/mbx/monitor"
	"github.com/mbx-net/mbx/telemetry"
	"github.com/mbx-net/mbx/telemetry/capture"
)

// traceCommand is Maglev's packet tracer for mbx: the flow the expression
// selects is marked in the datapath (the capture filter), every packet of
// it is recorded as mbx received it and as it left, with the verdict, and
// the decisions behind it (the service it matched, the scheduler's pick,
// the translation) come from the daemon's connection table: one span per
// flow, printed and exported over OTLP like the daemon's spans.
func traceCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "trace",
		Usage:     "follow one flow through the datapath: every packet in and out, with mbx's decisions, as a span",
		ArgsUsage: "FLOW (a tcpdump expression, e.g. 'tcp and host 198.18.0.2 and port 40000')",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "iface", Aliases: []string{"i"}, Required: true, Usage: "interface mbx runs on"},
			&ucli.Uint64Flag{Name: "count", Aliases: []string{"c"}, Value: 100, Usage: "stop after this many packets (each recorded in and out)"},
			&ucli.DurationFlag{Name: "duration", Value: 30 * time.Second, Usage: "stop after this long"},
			&ucli.StringFlag{Name: "socket", EnvVars: []string{"MBX_SOCKET"}, Value: control.DefaultSocket, Usage: "the daemon's control socket (for its decisions)"},
			&ucli.BoolFlag{Name: "force", Usage: "take over from a capture that was killed and left capture on"},
		},
		Action: func(c *ucli.Context) error {
			expr := strings.Join(c.Args().Slice(), " ")
			if strings.TrimSpace(expr) == "" {
				return errors.New("no flow: give a tcpdump expression selecting it")
			}
			if c.Uint64("count") == 0 || c.Duration("duration") <= 0 {
				return errors.New("--count and --duration must be positive: a trace is bounded")
			}
			f, err := filter.Compile(expr)
			if err != nil {
				return err
			}
			tel, err := telemetry.Start(c.Context, telemetry.Options{Version: c.App.Version, TracesOnly: true})
			if err != nil {
				return err
			}
			defer tel.Shutdown(context.Background())
			cl := control.NewClient(control.SocketPath(c.String("socket")))
			mon, err := daemonMonitorFilter(cl, c.App.ErrWriter)
			if err != nil {
				return err
			}
			cp, err := capture.Start(capture.Options{Iface: c.String("iface"), Points: capture.Both, Filter: f,
				Snaplen: 256, Rate: 10000, Count: 2 * c.Uint64("count"), Force: c.Bool("force"), MonitorFilter: mon})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "tracing %q on %s\n", f.Expr, c.String("iface"))
			flows, err := traceLoop(cp, 2*c.Uint64("count"), c.Duration("duration"))
			cp.Close()
			if err != nil {
				return err
			}
			cfg, _ := cl.Config()
			conns, _ := cl.Conns(0)
			for _, fl := range flows {
				fl.decide(cfg, conns)
				fl.print(c.App.Writer)
				fl.export(c.String("iface"), expr)
			}
			if len(flows) == 0 {
				fmt.Fprintln(c.App.ErrWriter, "no packet of the flow was seen")
			}
			return nil
		},
	}
}

// hop is one record of a traced packet.
type hop struct {
	at      time.Time
	point   string // entry, exit
	verdict string
	summary string
	length  int
}

// tracedFlow is the packets of one flow (both directions) and what mbx
// decided for it.
type tracedFlow struct {
	client, server netip.AddrPort // as the first packet had them
	proto          string
	protoNum       uint8
	hops           []hop
	decisions      []attribute.KeyValue
	story          []string
}

// traceLoop reads records until count, the deadline or a signal, grouping
// them by flow (an exit belongs to the entry before it: the same packet).
func traceLoop(cp *capture.Capture, count uint64, dur time.Duration) ([]*tracedFlow, error) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	deadline := time.Now().Add(dur)
	var (
		flows []*tracedFlow
		byKey = map[[2]netip.AddrPort]*tracedFlow{}
		last  *tracedFlow
		p     monitor.Packet
	)
	for n := uint64(0); n < count && time.Now().Before(deadline); {
		select {
		case <-sig:
			return flows, nil
		default:
		}
		cp.SetDeadline(time.Now().Add(200 * time.Millisecond))
		r, lost, err := cp.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return flows, err
		}
		if lost > 0 {
			continue
		}
		n++
		_ = monitor.Decode(monitor.LinkEthernet, r.Data, &p)
		h := hop{at: r.Time, point: r.PointName(), verdict: r.Verdict, summary: packetSummary(&p), length: r.Len}
		fl := last
		if r.Point == capture.Entry || fl == nil {
			a, b := netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort)
			k := [2]netip.AddrPort{a, b}
			if b.Compare(a) < 0 {
				k = [2]netip.AddrPort{b, a}
			}
			if fl = byKey[k]; fl == nil {
				fl = &tracedFlow{client: a, server: b, proto: protoName(p.Proto), protoNum: p.Proto}
				byKey[k] = fl
				flows = append(flows, fl)
			}
		}
		fl.hops = append(fl.hops, h)
		last = fl
	}
	return flows, nil
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1, 58:
		return "icmp"
	}
	return fmt.Sprintf("proto %d", p)
}

// packetSummary is a tcpdump-like one-liner.
func packetSummary(p *monitor.Packet) string {
	if !p.Src.IsValid() {
		return "not IP"
	}
	if p.SrcPort == 0 && p.DstPort == 0 {
		return fmt.Sprintf("%s > %s %s", p.Src, p.Dst, protoName(p.Proto))
	}
	s := fmt.Sprintf("%s > %s %s", netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort), protoName(p.Proto))
	if p.TCP {
		var fl []byte
		for i, c := range "FSRPAU" {
			if p.Flags&(1<<i) != 0 {
				fl = append(fl, byte(c))
			}
		}
		s += " [" + string(fl) + "]"
		if len(p.Payload) > 0 {
			s += fmt.Sprintf(" %d bytes", len(p.Payload))
		}
	}
	return s
}

// decide finds the flow's connection in the daemon's table and the
// service and real server it was scheduled to.
func (fl *tracedFlow) decide(cfg *lb.Config, conns []backend.Conn) {
	for _, c := range conns {
		if uint8(c.Proto) != fl.protoNum || c.Client != fl.client || c.Virtual != fl.server {
			continue
		}
		fl.decisions = append(fl.decisions,
			attribute.String("mbx.service", c.Virtual.String()),
			attribute.String("mbx.real", c.Real.String()),
			attribute.String("mbx.conn.state", c.State.String()))
		story := fmt.Sprintf("connection: %s -> service %s -> real server %s", c.Client, c.Virtual, c.Real)
		if c.Local.IsValid() {
			fl.decisions = append(fl.decisions, attribute.String("mbx.laddr", c.Local.String()))
			story += fmt.Sprintf(" via local address %s", c.Local)
		}
		story += fmt.Sprintf(", state %s", c.State)
		if cfg != nil {
			for _, s := range cfg.Services {
				if s.Key.Addr != c.Virtual.Addr() || s.Key.Port != c.Virtual.Port() || s.Key.Proto != c.Proto {
					continue
				}
				fl.decisions = append(fl.decisions, attribute.String("mbx.scheduler", s.Scheduler))
				story += fmt.Sprintf("; scheduler %s", s.Scheduler)
				for _, r := range s.Reals {
					if r.AddrPort() == c.Real {
						fl.decisions = append(fl.decisions, attribute.String("mbx.real.forward", string(r.Forward)),
							attribute.Int("mbx.real.weight", r.Weight))
						story += fmt.Sprintf(", forwarding %s, weight %d", r.Forward, r.Weight)
					}
				}
			}
		}
		fl.story = append(fl.story, story)
		return
	}
	fl.story = append(fl.story, "no load-balanced connection: mbx left the flow to the kernel, or it has ended")
}

func (fl *tracedFlow) print(w io.Writer) {
	fmt.Fprintf(w, "flow %s > %s %s\n", fl.client, fl.server, fl.proto)
	for _, s := range fl.story {
		fmt.Fprintf(w, "  %s\n", s)
	}
	t0 := fl.hops[0].at
	for _, h := range fl.hops {
		v := ""
		if h.point == "exit" {
			v = " " + h.verdict
		}
		fmt.Fprintf(w, "  +%.6f %s%s %s (%d bytes)\n", h.at.Sub(t0).Seconds(), h.point, v, h.summary, h.length)
	}
}

// export sends the flow as one span, its packets as span events.
func (fl *tracedFlow) export(iface, expr string) {
	tr := otel.GetTracerProvider().Tracer("github.com/mbx-net/mbx/cli")
	attrs := append([]attribute.KeyValue{
		attribute.String("mbx.trace.filter", expr),
		attribute.String("mbx.iface", iface),
		attribute.String("mbx.client", fl.client.String()),
		attribute.String("mbx.server", fl.server.String()),
		attribute.String("network.transport", fl.proto),
		attribute.Int("mbx.trace.packets", len(fl.hops)),
	}, fl.decisions...)
	_, span := tr.Start(context.Background(), "mbx.trace", trace.WithTimestamp(fl.hops[0].at), trace.WithAttributes(attrs...))
	for _, h := range fl.hops {
		a := []attribute.KeyValue{attribute.String("mbx.packet", h.summary), attribute.Int("mbx.len", h.length)}
		if h.point == "exit" {
			a = append(a, attribute.String("mbx.verdict", h.verdict))
		}
		span.AddEvent(h.point, trace.WithTimestamp(h.at), trace.WithAttributes(a...))
	}
	span.End(trace.WithTimestamp(fl.hops[len(fl.hops)-1].at))
}

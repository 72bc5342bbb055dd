package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/telemetry/capture"
)

func captureCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "capture",
		Usage:     "record packets inside the XDP datapath, before and after translation, as pcapng",
		ArgsUsage: "[tcpdump filter expression]",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "iface", Aliases: []string{"i"}, Required: true, Usage: "interface mbx runs on"},
			&ucli.StringFlag{Name: "write", Aliases: []string{"w"}, Usage: "write pcapng to FILE ('-' for stdout) instead of printing"},
			&ucli.StringFlag{Name: "point", Value: "both", Usage: "entry (as received), exit (as sent, with the verdict) or both"},
			&ucli.Uint64Flag{Name: "count", Aliases: []string{"c"}, Usage: "stop after this many records (0: until interrupted)"},
			&ucli.IntFlag{Name: "rate", Value: 10000, Usage: "records per second and CPU at most (the datapath drops the rest)"},
			&ucli.IntFlag{Name: "snaplen", Aliases: []string{"s"}, Value: capture.MaxSnaplen, Usage: fmt.Sprintf("bytes of each packet (at most %d)", capture.MaxSnaplen)},
			&ucli.DurationFlag{Name: "duration", Usage: "stop after this long (0: until interrupted)"},
			&ucli.BoolFlag{Name: "force", Usage: "take over from a capture that was killed and left capture on"},
			&ucli.StringFlag{Name: "socket", EnvVars: []string{"MBX_SOCKET"}, Value: control.DefaultSocket, Usage: "the daemon's control socket (for its stream monitor's filter)"},
		},
		Action: func(c *ucli.Context) error {
			points := map[string]uint32{"entry": capture.Entry, "exit": capture.Exit, "both": capture.Both}[c.String("point")]
			if points == 0 {
				return fmt.Errorf("bad --point %q (entry, exit or both)", c.String("point"))
			}
			if s := c.Int("snaplen"); s < 1 || s > capture.MaxSnaplen {
				return fmt.Errorf("bad --snaplen %d (1 to %d)", s, capture.MaxSnaplen)
			}
			f, err := filter.Compile(strings.Join(c.Args().Slice(), " "))
			if err != nil {
				return err
			}
			out, closeOut, err := openOutput(c.String("write"), c.App.Writer)
			if err != nil {
				return err
			}
			defer closeOut()
			mon, err := daemonMonitorFilter(control.NewClient(control.SocketPath(c.String("socket"))), c.App.ErrWriter)
			if err != nil {
				return err
			}
			cp, err := capture.Start(capture.Options{Iface: c.String("iface"), Points: points, Filter: f,
				Snaplen: c.Int("snaplen"), Rate: c.Int("rate"), Count: c.Uint64("count"), Force: c.Bool("force"),
				MonitorFilter: mon})
			if err != nil {
				return err
			}
			defer cp.Close()
			fmt.Fprintf(c.App.ErrWriter, "capturing on %s at %s, filter %q\n", c.String("iface"), c.String("point"), f.Expr)
			var sink recordSink
			if c.String("write") != "" {
				if sink, err = newPcapngSink(out, c.String("iface"), f.Expr, c.Int("snaplen")); err != nil {
					return err
				}
			} else {
				sink = textSink{out}
			}
			return captureLoop(cp, sink, c.Uint64("count"), c.Duration("duration"), c.App.ErrWriter)
		},
	}
}

// daemonMonitorFilter is the daemon's stream-monitor filter, which a
// capture's copy of the datapath must keep (nil: no filtered monitor). An
// unreachable daemon is a warning: the capture works on the datapath alone.
func daemonMonitorFilter(cl *control.Client, errw io.Writer) (*filter.Filter, error) {
	expr, err := cl.MonitorFilter()
	if err != nil {
		fmt.Fprintf(errw, "warning: the daemon's stream-monitor filter is unknown (%v): a filtered monitor would track every connection during the capture\n", err)
		return nil, nil
	}
	if expr == "" {
		return nil, nil
	}
	f, err := filter.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("the daemon's stream-monitor filter: %w", err)
	}
	return f, nil
}

func openOutput(path string, stdout io.Writer) (io.Writer, func(), error) {
	switch path {
	case "", "-":
		return stdout, func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}

type recordSink interface {
	write(capture.Record) error
	flush() error
}

func captureLoop(cp *capture.Capture, sink recordSink, count uint64, dur time.Duration, errw io.Writer) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	var deadline time.Time
	if dur > 0 {
		deadline = time.Now().Add(dur)
	}
	var n, lost uint64
	defer func() {
		sink.flush()
		fmt.Fprintf(errw, "%d records, %d lost\n", n, lost)
	}()
	for count == 0 || n < count {
		select {
		case <-sig:
			return nil
		default:
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return nil
		}
		cp.SetDeadline(time.Now().Add(200 * time.Millisecond))
		r, l, err := cp.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return err
		}
		if l > 0 {
			lost += uint64(l)
			continue
		}
		if err := sink.write(r); err != nil {
			return err
		}
		n++
	}
	return nil
}

// pcapngSink writes one pcapng interface per capture point, so Wireshark
// shows "wan0 entry" / "wan0 exit"; each exit packet's comment names the
// verdict.
type pcapngSink struct {
	w    *pcapgo.NgWriter
	ids  map[uint32]int
	snap int
}

func newPcapngSink(out io.Writer, iface, expr string, snap int) (*pcapngSink, error) {
	mk := func(point string) pcapgo.NgInterface {
		return pcapgo.NgInterface{Name: iface + " " + point, Description: "mbx XDP " + point, Filter: expr,
			LinkType: layers.LinkTypeEthernet, SnapLength: uint32(snap), TimestampResolution: 9, OS: "Linux"}
	}
	w, err := pcapgo.NewNgWriterInterface(out, mk("entry"), pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "mbx capture"}})
	if err != nil {
		return nil, err
	}
	exit, err := w.AddInterface(mk("exit"))
	if err != nil {
		return nil, err
	}
	return &pcapngSink{w: w, ids: map[uint32]int{capture.Entry: 0, capture.Exit: exit}, snap: snap}, nil
}

func (s *pcapngSink) write(r capture.Record) error {
	ci := gopacket.CaptureInfo{Timestamp: r.Time, CaptureLength: len(r.Data), Length: r.Len, InterfaceIndex: s.ids[r.Point]}
	comment := "mbx " + r.PointName()
	if r.Point == capture.Exit {
		comment += " " + r.Verdict
	}
	return s.w.WritePacketWithOptions(ci, r.Data, pcapgo.NgPacketOptions{Comments: []string{comment}})
}

func (s *pcapngSink) flush() error { return s.w.Flush() }

// textSink prints one line per record, tcpdump-like.
type textSink struct{ w io.Writer }

func (s textSink) write(r capture.Record) error {
	p := gopacket.NewPacket(r.Data, layers.LayerTypeEthernet, gopacket.NoCopy)
	what := ""
	if nl := p.NetworkLayer(); nl != nil {
		src, dst := nl.NetworkFlow().Endpoints()
		what = src.String() + " > " + dst.String()
		if tl := p.TransportLayer(); tl != nil {
			s, d := tl.TransportFlow().Endpoints()
			what = fmt.Sprintf("%s.%s > %s.%s %s", src, s, dst, d, tl.LayerType())
			if tcp, ok := tl.(*layers.TCP); ok {
				what += " " + tcpFlags(tcp)
			}
		}
	}
	verdict := ""
	if r.Point == capture.Exit {
		verdict = " " + r.Verdict
	}
	_, err := fmt.Fprintf(s.w, "%s %-5s%s %s length %d\n", r.Time.Format("15:04:05.000000"), r.PointName(), verdict, what, r.Len)
	return err
}

func (s textSink) flush() error { return nil }

func tcpFlags(t *layers.TCP) string {
	f := ""
	for _, x := range []struct {
		on bool
		c  string
	}{{t.SYN, "S"}, {t.FIN, "F"}, {t.RST, "R"}, {t.PSH, "P"}, {t.ACK, "."}} {
		if x.on {
			f += x.c
		}
	}
	return "[" + f + "]"
}

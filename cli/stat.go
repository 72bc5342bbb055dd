package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/gopacket/gopacket/layers"
	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/monitor"
	"github.com/mbx-net/mbx/monitor/midstat"
)

// monitorFlags are the tracking options `mbx stat` and `mbx monitor` share.
func monitorFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.StringFlag{Name: "pcap", Usage: "process this capture file (pcap or pcapng) offline"},
		&ucli.StringFlag{Name: "filter", Usage: "tcpdump expression: which connections to monitor (tested on a connection's first packet and on orphans)"},
		&ucli.BoolFlag{Name: "ignore-vlan", Usage: "key connections on the 5-tuple only (tshark's view); by default VLAN tags are part of the key"},
		&ucli.DurationFlag{Name: "idle-timeout", Value: 5 * time.Minute, Usage: "end connections idle this long (capture time)"},
		&ucli.IntFlag{Name: "buffer", Value: 256 << 10, Usage: "per-side receive buffer in bytes (out-of-order data held, data Peek sees)"},
	}
}

// newMonitor builds a Monitor from monitorFlags.
func newMonitor(c *ucli.Context, hash, buffers bool) (*monitor.Monitor, error) {
	if c.Int("buffer") <= 0 {
		return nil, fmt.Errorf("--buffer %d: must be positive", c.Int("buffer"))
	}
	if c.Duration("idle-timeout") <= 0 {
		return nil, fmt.Errorf("--idle-timeout %s: must be positive", c.Duration("idle-timeout"))
	}
	opts := monitor.Options{
		IgnoreVLAN:  c.Bool("ignore-vlan"),
		IdleTimeout: c.Duration("idle-timeout"),
		BufferSize:  c.Int("buffer"),
		StreamHash:  hash,
		NoBuffer:    !buffers,
	}
	if expr := c.String("filter"); expr != "" {
		f, err := pcapFilter(expr)
		if err != nil {
			return nil, err
		}
		opts.Filter = f
	}
	return monitor.New(opts), nil
}

// pcapFilter compiles expr per link type (a capture has one), checking it
// for Ethernet at once so a bad expression fails before any packet.
func pcapFilter(expr string) (func(p *monitor.Packet) bool, error) {
	eth, err := filter.Compile(expr)
	if err != nil {
		return nil, err
	}
	byLink := map[monitor.LinkType]*filter.Filter{monitor.LinkEthernet: eth}
	return func(p *monitor.Packet) bool {
		f, ok := byLink[p.Link]
		if !ok {
			f, _ = filter.CompileLink(layers.LinkType(p.Link), expr)
			byLink[p.Link] = f
		}
		if f == nil {
			return false
		}
		ok, _ = f.Match(p.Frame)
		return ok
	}, nil
}

// statCommand is mOS's midstat.
func statCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "stat",
		Usage: "midstat: TCP connections with both sides' states, packets, bytes and age",
		Description: "Live (without --pcap): the table of the stream monitor the daemon runs (mbx run --monitor IF),\n" +
			"once, or with --watch every --interval. With --pcap, processes a capture and prints the final table\n" +
			"(every connection, how it ended) and a summary; --json prints JSON Lines, one object per connection.",
		Flags: append(monitorFlags(),
			&ucli.BoolFlag{Name: "json", Usage: "JSON Lines, one object per connection"},
			&ucli.BoolFlag{Name: "watch", Usage: "live: print the table again every --interval until interrupted"},
			&ucli.BoolFlag{Name: "once", Usage: "live: print the table once (the default)"},
			&ucli.DurationFlag{Name: "interval", Value: time.Second, Usage: "live: how often --watch prints"},
			&ucli.StringFlag{Name: "socket", EnvVars: []string{"MBX_SOCKET"}, Value: control.DefaultSocket, Usage: "control socket (live)"},
			&ucli.BoolFlag{Name: "stream-hash", Usage: "with --json: add stream_sha256 [c2s, s2c] of the reassembled streams"},
		),
		Action: func(c *ucli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected argument %q", c.Args().First())
			}
			if c.String("pcap") == "" {
				return liveStat(c)
			}
			if c.Bool("watch") {
				return fmt.Errorf("--watch is for the live table (without --pcap)")
			}
			// Like mOS's midstat, no receive buffers: bytes are counted
			// (and hashed), never kept.
			m, err := newMonitor(c, c.Bool("stream-hash"), false)
			if err != nil {
				return err
			}
			tab := midstat.New(m, true, c.Bool("stream-hash"))
			start := time.Now()
			if err := monitor.ReadFile(c.String("pcap"), m); err != nil {
				return err
			}
			rows := tab.Rows()
			if c.Bool("json") {
				return midstat.WriteJSON(os.Stdout, rows)
			}
			if err := midstat.WriteTable(os.Stdout, rows, time.Time{}); err != nil {
				return err
			}
			st := m.Stats()
			fmt.Printf("\n%d packets (%d TCP, %d orphans, %d malformed, %d fragments), %d connections, in %s\n",
				st.Packets, st.TCP, st.Orphans, st.Malformed, st.Fragments, len(rows), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
}

// eventRecord is one line of `mbx monitor --events`.
type eventRecord struct {
	Time        float64 `json:"t"`
	Packet      uint64  `json:"packet"`
	Event       string  `json:"event"`
	Hook        string  `json:"hook"`
	Side        string  `json:"side,omitempty"`
	Conn        uint64  `json:"conn,omitempty"`
	Client      string  `json:"client,omitempty"`
	Server      string  `json:"server,omitempty"`
	ClientState string  `json:"client_state,omitempty"`
	ServerState string  `json:"server_state,omitempty"`
	EndReason   string  `json:"end_reason,omitempty"`
}

func eventRecordOf(m *monitor.Monitor, ev monitor.Event, hook monitor.Hook, conn *monitor.Conn, side monitor.Side) eventRecord {
	r := eventRecord{Time: float64(m.Packet().Time) / 1e9, Packet: m.Stats().Packets, Event: ev.String(), Hook: hook.String()}
	if conn != nil {
		r.Side, r.Conn = side.String(), conn.ID
		r.Client, r.Server = conn.Client.String(), conn.Server.String()
		r.ClientState = conn.Sides[monitor.Client].State.String()
		r.ServerState = conn.Sides[monitor.Server].State.String()
		r.EndReason = conn.EndReason
	}
	return r
}

// monitorCommand runs the stream monitor and prints its events.
func monitorCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "monitor",
		Usage: "run the TCP stream monitor on a capture and print its events",
		Flags: append(monitorFlags(),
			&ucli.BoolFlag{Name: "events", Usage: "print every event as JSON Lines (default: only a summary)"},
		),
		Action: func(c *ucli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected argument %q", c.Args().First())
			}
			if c.String("pcap") == "" {
				return fmt.Errorf("--pcap FILE is required (live events: mbx run --monitor IF --monitor-log FILE)")
			}
			m, err := newMonitor(c, false, true)
			if err != nil {
				return err
			}
			counts := map[monitor.Event]uint64{}
			enc := json.NewEncoder(os.Stdout)
			var encErr error
			m.Trace(func(ev monitor.Event, hook monitor.Hook, conn *monitor.Conn, side monitor.Side) {
				counts[ev]++
				if !c.Bool("events") || encErr != nil {
					return
				}
				r := eventRecordOf(m, ev, hook, conn, side)
				encErr = enc.Encode(&r)
			})
			if err := monitor.ReadFile(c.String("pcap"), m); err != nil {
				return err
			}
			if encErr != nil {
				return encErr
			}
			if !c.Bool("events") {
				for ev := monitor.EvPktIn; ev <= monitor.EvError; ev++ {
					fmt.Printf("%-13s %d\n", ev, counts[ev])
				}
			}
			return nil
		},
	}
}

// liveStat prints the daemon's live monitor table.
func liveStat(c *ucli.Context) error {
	if c.Bool("watch") && c.Bool("once") {
		return fmt.Errorf("give --watch or --once, not both")
	}
	if c.Duration("interval") <= 0 {
		return fmt.Errorf("--interval %s: must be positive", c.Duration("interval"))
	}
	if c.String("filter") != "" || c.Bool("stream-hash") {
		return fmt.Errorf("--filter and --stream-hash are for --pcap; the live monitor's filter is mbx run --monitor-filter")
	}
	cl := control.NewClient(control.SocketPath(c.String("socket")))
	for {
		st, err := cl.MonitorStatus()
		if err != nil {
			return err
		}
		if c.Bool("json") {
			if err := midstat.WriteJSON(os.Stdout, st.Conns); err != nil {
				return err
			}
		} else {
			if c.Bool("watch") {
				fmt.Print("\033[H\033[2J") // clear the terminal, as watch(1)
			}
			if err := midstat.WriteTable(os.Stdout, st.Conns, time.Now()); err != nil {
				return err
			}
			s := st.Stats
			fmt.Printf("\n%d packets (%d TCP, %d orphans, %d filtered, %d fragments: %d datagrams reassembled, %d untracked), %d connections tracked, %d in the table; %d reports lost\n",
				s.Packets, s.TCP, s.Orphans, s.Filtered, s.Fragments, s.Reassembled, s.FragmentsUntracked, s.Conns, len(st.Conns), s.Lost)
			if st.Inline {
				fmt.Printf("inline: XDP forwarded %d, dropped %d, sent %d to Go (%d without a socket); Go forwarded %d, dropped %d (%d lost: send ring full)\n",
					s.Forwarded, s.Dropped, s.ToGo, s.NoSocket, s.GoForwarded, s.GoDropped, s.TxFull)
			}
		}
		if !c.Bool("watch") {
			return nil
		}
		select {
		case <-c.Context.Done():
			return nil
		case <-time.After(c.Duration("interval")):
		}
	}
}

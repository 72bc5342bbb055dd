// Command inline-firewall is the stream monitor's inline example: a bump in
// the wire between two interfaces (mOS's nic_forward_table) that blocks a
// TCP connection as soon as the client sends a forbidden pattern, by a
// user-defined event on NEW_DATA, and optionally rewrites bytes the server
// sends (same length; checksums fixed).
//
//	inline-firewall -pair in0:in1 -filter 'tcp port 80' -deny 'GET /secret' [-rewrite 'nginx=NGINX']
//
// Connections the filter does not select, and everything not TCP, are
// forwarded in XDP and never reach Go. A blocked connection's packet with
// the pattern is dropped, and the rest of the connection is dropped in XDP.
// On SIGINT or SIGTERM it prints what it did and exits.
//
// On DPDK ports (built with -tags dpdk), the same handlers run on the
// polling workers:
//
//	inline-firewall -backend dpdk -eal "-l 0 --no-huge -m 512 --vdev=net_af_packet0,iface=in0 --vdev=net_af_packet1,iface=in1" \
//	        -pair net_af_packet0:net_af_packet1 -deny 'GET /secret'
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/mbx-net/mbx/backend"
	_ "github.com/mbx-net/mbx/backend/dpdk" // with -tags dpdk
	_ "github.com/mbx-net/mbx/backend/xdp"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/monitor"
)

func main() {
	pair := flag.String("pair", "", "the two interfaces to sit between, IF1:IF2")
	expr := flag.String("filter", "tcp", "tcpdump expression: the connections the firewall inspects")
	deny := flag.String("deny", "", "block a connection whose client sends this")
	rewrite := flag.String("rewrite", "", "OLD=NEW: replace OLD with NEW (same length) in what servers send")
	be := flag.String("backend", "xdp", "the data plane: xdp (interfaces), or dpdk (ports; a binary built with -tags dpdk)")
	eal := flag.String("eal", "", "dpdk: the EAL's arguments, with a --vdev per port of -pair")
	flag.Parse()
	opts := backend.Options{ConnMax: 1 << 16} // the load balancer's table: unused here
	if *be == "dpdk" {
		a, b, _ := strings.Cut(*pair, ":")
		opts.EAL, opts.Ports = strings.Fields(*eal), []string{a, b}
	}
	if err := run(*be, opts, *pair, *expr, *deny, *rewrite); err != nil {
		fmt.Fprintln(os.Stderr, "inline-firewall:", err)
		os.Exit(1)
	}
}

func run(beName string, opts backend.Options, pair, expr, deny, rewrite string) error {
	a, b, ok := strings.Cut(pair, ":")
	if !ok || a == "" || b == "" {
		return fmt.Errorf("-pair %q: want IF1:IF2", pair)
	}
	if deny == "" && rewrite == "" {
		return fmt.Errorf("nothing to do: give -deny and/or -rewrite")
	}
	var old, repl []byte
	if rewrite != "" {
		o, n, ok := strings.Cut(rewrite, "=")
		if !ok || len(o) != len(n) || o == "" {
			return fmt.Errorf("-rewrite %q: want OLD=NEW of the same length", rewrite)
		}
		old, repl = []byte(o), []byte(n)
	}
	f, err := filter.Compile(expr)
	if err != nil {
		return err
	}

	m := monitor.New(monitor.Options{Filter: func(p *monitor.Packet) bool { ok, _ := f.Match(p.Frame); return ok }})
	blocked, rewritten := 0, 0
	if deny != "" {
		// The user-defined event: new bytes the server receives contain
		// the pattern (Peek sees the reassembled stream, so a pattern cut
		// across two segments is found too).
		forbidden := m.DefineEvent(monitor.EvNewData, func(c *monitor.Conn, side monitor.Side) bool {
			got, _ := c.Peek(side)
			return side == monitor.Server && bytes.Contains(got, []byte(deny))
		})
		m.On(forbidden, monitor.HookRecv, func(c *monitor.Conn, _ monitor.Side, _ monitor.Event) {
			blocked++
			slog.Info("blocked", "client", c.Client, "server", c.Server, "pattern", deny)
			c.Drop()
		})
	}
	if old != nil {
		// Per packet, in what the client receives.
		m.On(monitor.EvPktIn, monitor.HookRecv, func(c *monitor.Conn, side monitor.Side, _ monitor.Event) {
			p := m.Packet()
			if side != monitor.Client || !bytes.Contains(p.Payload, old) {
				return
			}
			for i := bytes.Index(p.Payload, old); i >= 0; i = bytes.Index(p.Payload, old) {
				copy(p.Payload[i:], repl)
			}
			if err := monitor.FixChecksums(p.Frame); err == nil {
				rewritten++
			}
		})
	}

	if beName == "xdp" {
		opts.Ifaces = []string{a, b}
	}
	be, err := backend.Open(beName, opts)
	if err != nil {
		return err
	}
	defer be.Close()
	mp, ok := be.(backend.MonitorPlane)
	if !ok {
		return fmt.Errorf("backend %s has no stream monitor", beName)
	}
	inl, err := mp.StartMonitor(m, backend.MonitorOptions{Inline: [][2]string{{a, b}}, Filter: f})
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- inl.Run() }()
	slog.Info("inline", "pair", pair, "filter", expr, "deny", deny, "rewrite", rewrite)
	select {
	case <-sig:
	case err = <-done:
	}
	inl.Stop()
	st, _ := inl.Stats()
	fmt.Printf("blocked %d connections, rewrote %d packets; %s forwarded %d, dropped %d by connection; the handlers forwarded %d, dropped %d\n",
		blocked, rewritten, beName, st.Forwarded, st.Dropped, st.GoForwarded, st.GoDropped)
	return err
}

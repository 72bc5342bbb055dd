package cli

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/backend"
	_ "github.com/mbx-net/mbx/backend/xdp" // registers the xdp backend
	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/keepalived"
	"github.com/mbx-net/mbx/lb"
	"github.com/mbx-net/mbx/telemetry"
	"go.opentelemetry.io/otel"
)

func runCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "run",
		Usage: "run the daemon: attach the data plane, serve the control socket",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "backend", Value: "xdp", Usage: "data plane: xdp or dpdk"},
			&ucli.StringSliceFlag{Name: "iface", Usage: "interface to attach to (repeat)"},
			&ucli.StringFlag{Name: "eal", Usage: `dpdk backend: the EAL's arguments, e.g. "-l 0 --no-huge --no-pci -m 512 --vdev=net_af_xdp0,iface=eth0"`},
			&ucli.StringSliceFlag{Name: "port", Usage: "dpdk backend: a DPDK port mbx runs on and its address, NAME=A.B.C.D/LEN (repeat per port; repeat a port with an IPv6 ADDR/LEN for IPv6 services; NAME alone: a port without an address, e.g. an --inline pair's)"},
			&ucli.StringSliceFlag{Name: "route", Usage: "dpdk backend: a static route, DST/LEN=GATEWAY (repeat; e.g. to real servers behind a router)"},
			&ucli.StringSliceFlag{Name: "tap", Usage: "dpdk backend: the kernel exception path of a port, PORT=IFNAME: a TAP interface with the port's MAC and address gets the packets that are not mbx's (ssh, routing daemons) and sends the kernel's replies out of the port (repeat per port)"},
			&ucli.StringFlag{Name: "config", Usage: "YAML configuration file"},
			&ucli.StringFlag{Name: "keepalived-conf", Usage: "keepalived.conf (virtual_server blocks) instead of --config"},
			&ucli.StringFlag{Name: "socket", EnvVars: []string{"MBX_SOCKET"}, Value: control.DefaultSocket, Usage: "control socket"},
			&ucli.StringFlag{Name: "xdp-mode", Value: "native", Usage: "native or generic"},
			&ucli.IntFlag{Name: "conn-max", Value: 1 << 20, Usage: "connections the table holds"},
			&ucli.UintFlag{Name: "hash-seed", Usage: "flow hash seed; give every node of a cluster the same one"},
			&ucli.StringFlag{Name: "tunnel-src", Usage: "tunnel (-i) outer sources: one address of this IPv4 prefix per flow, so receivers' RSS spreads flows (default: the egress address)"},
			&ucli.StringFlag{Name: "instance", Usage: "instance name for pinned state /sys/fs/bpf/mbx/NAME (default: the socket's file name)"},
			&ucli.StringFlag{Name: "pin-dir", Usage: "where state is pinned for restarts without loss (default /sys/fs/bpf/mbx/INSTANCE; with --backend dpdk a plain directory, /run/mbx/INSTANCE, holding the saved connections; 'none' disables)"},
			&ucli.BoolFlag{Name: "fresh", Usage: "discard state a previous run left (drops its connections)"},
			&ucli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error (changeable at run time: mbx log-level)"},
			&ucli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
			&ucli.StringSliceFlag{Name: "monitor", Usage: "run the TCP stream monitor on this interface (repeat; attached like --iface); see mbx stat"},
			&ucli.StringSliceFlag{Name: "inline", Usage: "run the stream monitor inline between two interfaces, IF1:IF2, forwarding both ways like mOS's nic_forward_table (repeat for more pairs; attached like --iface)"},
			&ucli.StringFlag{Name: "monitor-filter", Usage: "tcpdump expression: which connections the stream monitor tracks (run in XDP on a connection's first packet and on orphans); inline, the rest is forwarded in XDP"},
			&ucli.Float64Flag{Name: "monitor-sample", Usage: "passive monitor: track only this fraction of TCP connections, 0 < RATE < 1, chosen in XDP by a hash of the connection (the rest cost a parse); e.g. with --trace-conns 1 for cheap connection traces"},
			&ucli.Float64Flag{Name: "trace-conns", Usage: "export a span per monitored TCP connection (start, state changes, retransmissions, end) for this fraction of connections, 0 < RATE <= 1; needs --monitor or --inline"},
			&ucli.StringFlag{Name: "monitor-log", Usage: "write the monitor's connection events (start, state change, retransmission, end) to this file as JSON Lines"},
			&ucli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on HOST:PORT/metrics (OTLP export: set OTEL_EXPORTER_OTLP_ENDPOINT)"},
		},
		Action: func(c *ucli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected argument %q", c.Args().First())
			}
			log, level, err := newLogger(c.String("log-level"), c.String("log-format"))
			if err != nil {
				return err
			}
			// Read and validate the configuration before touching anything.
			var ops []lb.Op
			var loader func() ([]lb.Op, error)
			configPath := c.String("config")
			switch kc := c.String("keepalived-conf"); {
			case kc != "" && configPath != "":
				return fmt.Errorf("give --config or --keepalived-conf, not both")
			case kc != "":
				configPath = kc
				loader = func() ([]lb.Op, error) {
					res, err := keepalived.Load(kc)
					if err != nil {
						return nil, err
					}
					for _, w := range res.Warnings {
						log.Warn("keepalived.conf: not used by mbx", "where", w)
					}
					return res.Ops, nil
				}
			case configPath != "":
				loader = func() ([]lb.Op, error) { return control.LoadConfigFile(configPath) }
			}
			if loader != nil {
				if ops, err = loader(); err != nil {
					return err
				}
			}
			mon, err := parseLiveMonitor(c)
			if err != nil {
				return err
			}
			defer mon.close()
			if mon != nil && c.String("backend") == "dpdk" {
				mon.goTracker = true
			}
			if c.Int("conn-max") < 1 {
				return fmt.Errorf("--conn-max must be positive")
			}
			instance := c.String("instance")
			if instance == "" {
				instance = strings.TrimSuffix(filepath.Base(c.String("socket")), ".sock")
			}
			pinDir := c.String("pin-dir")
			switch {
			case pinDir == "" && c.String("backend") == "dpdk":
				// A plain directory: DPDK's connections are saved to a file.
				pinDir = filepath.Join("/run/mbx", instance)
			case pinDir == "":
				pinDir = filepath.Join("/sys/fs/bpf/mbx", instance)
			case pinDir == "none":
				pinDir = ""
			}
			var tunSrc netip.Prefix
			if v := c.String("tunnel-src"); v != "" {
				p, err := netip.ParsePrefix(v)
				if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
					return fmt.Errorf("--tunnel-src %q: an IPv4 prefix of at least 4 addresses (e.g. 198.19.255.0/24)", v)
				}
				tunSrc = p
			}
			eal, ports, routes, taps := strings.Fields(c.String("eal")), c.StringSlice("port"), c.StringSlice("route"), c.StringSlice("tap")
			if configPath != "" && c.String("keepalived-conf") == "" && c.String("backend") == "dpdk" {
				// The YAML file's dpdk section stands in for absent flags.
				sec, err := control.LoadDPDKFile(configPath)
				if err != nil {
					return err
				}
				if sec != nil {
					if len(eal) == 0 {
						eal = strings.Fields(sec.EAL)
					}
					if len(ports) == 0 {
						ports = sec.Ports
					}
					if len(routes) == 0 {
						routes = sec.Routes
					}
					if len(taps) == 0 {
						taps = sec.Taps
					}
				}
			}
			be, err := backend.Open(c.String("backend"), backend.Options{
				TunnelSrc: tunSrc,
				PinDir:    pinDir,
				Fresh:     c.Bool("fresh"),
				Ifaces:    mon.withIfaces(c.StringSlice("iface")),
				XDPMode:   c.String("xdp-mode"),
				ConnMax:   c.Int("conn-max"),
				HashSeed:  uint32(c.Uint("hash-seed")),
				Logger:    log,
				EAL:       eal,
				Ports:     ports,
				Routes:    routes,
				Taps:      taps,
			})
			if err != nil {
				return err
			}
			tel, err := telemetry.Start(c.Context, telemetry.Options{MetricsAddr: c.String("metrics-addr"), Logger: log})
			if err != nil {
				_ = be.Close()
				return err
			}
			defer tel.Shutdown(context.Background())
			d := control.NewDaemon(be, c.String("backend"), log)
			d.SetLogLevel(level)
			if err := d.RegisterMetrics(otel.Meter("github.com/mbx-net/mbx")); err != nil {
				_ = be.Close()
				return err
			}
			if loader != nil {
				d.SetConfigLoader(configPath, loader)
			}
			if pinDir != "" {
				d.SetStateFile(filepath.Join(filepath.Dir(c.String("socket")), instance+".state.json"))
			}
			cleanup := func() {
				_ = d.Shutdown()
				_ = be.Close()
			}
			switch {
			case len(ops) > 0:
				if err := d.Do(ops); err != nil {
					cleanup()
					return fmt.Errorf("%s: %w", configPath, err)
				}
			case be.Adopted() > 0:
				// A restart took over a running data plane: keep serving
				// what it was configured with.
				if ok, err := d.RestoreState(); err != nil {
					cleanup()
					return err
				} else if ok {
					log.Info("restored the configuration of the previous run", "services", be.Adopted())
				}
			}
			if configPath != "" && c.String("keepalived-conf") == "" {
				// The YAML config's bricks section: applied at start and on reload.
				m, err := control.LoadBricksFile(configPath)
				if err != nil {
					cleanup()
					return err
				}
				if m != nil {
					if err := d.SetBricks(m); err != nil {
						cleanup()
						return fmt.Errorf("%s: bricks: %w", configPath, err)
					}
				}
				d.SetBricksLoader(func() (*bricks.Model, error) { return control.LoadBricksFile(configPath) })
			}
			if mon != nil {
				if err := mon.start(d); err != nil {
					cleanup()
					flag := "--monitor"
					if len(mon.opts.Inline) > 0 {
						flag = "--inline"
					}
					return fmt.Errorf("%s: %w", flag, err)
				}
			}
			srv, err := control.Listen(d, c.String("socket"))
			if err != nil {
				cleanup()
				return err
			}
			log.Info("mbx running", "backend", c.String("backend"), "ifaces", c.StringSlice("iface"), "socket", c.String("socket"), "metrics", tel.MetricsAddr())
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR2)
			stop := make(chan bool, 1)
			srv.Stop = func(keep bool) { stop <- keep }
			keep := false
		wait:
			for {
				select {
				case s := <-sig:
					if s == syscall.SIGHUP {
						if err := d.Reload(); err != nil {
							log.Error("reload refused; the running configuration is unchanged", "err", err)
						}
						continue
					}
					keep = s == syscall.SIGUSR2
					log.Info("stopping", "signal", s.String(), "keep_datapath", keep)
					break wait
				case keep = <-stop:
					log.Info("stopping", "request", "mbx stop", "keep_datapath", keep)
					break wait
				}
			}
			_ = srv.Close()
			if keep && pinDir != "" {
				// Restart/upgrade without loss: the pinned datapath keeps
				// forwarding until the next `mbx run` takes it over.
				d.Handover()
				return be.Handover()
			}
			cleanup()
			return nil
		},
	}
}

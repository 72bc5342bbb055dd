package cli

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/backend"
	_ "github.com/mbx-net/mbx/backend/xdp" // registers the xdp backend
	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/lb"
)

func runCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "run",
		Usage: "run the daemon: attach the data plane, serve the control socket",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "backend", Value: "xdp", Usage: "data plane: xdp or dpdk"},
			&ucli.StringSliceFlag{Name: "iface", Usage: "interface to attach to (repeat)"},
			&ucli.StringFlag{Name: "config", Usage: "YAML configuration file"},
			&ucli.StringFlag{Name: "socket", EnvVars: []string{"MBX_SOCKET"}, Value: control.DefaultSocket, Usage: "control socket"},
			&ucli.StringFlag{Name: "xdp-mode", Value: "native", Usage: "native or generic"},
			&ucli.IntFlag{Name: "conn-max", Value: 1 << 20, Usage: "connections the table holds"},
			&ucli.UintFlag{Name: "hash-seed", Usage: "flow hash seed; give every node of a cluster the same one"},
			&ucli.StringFlag{Name: "log-level", Value: "info"},
		},
		Action: func(c *ucli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected argument %q", c.Args().First())
			}
			log, err := newLogger(c.String("log-level"))
			if err != nil {
				return err
			}
			// Read and validate the configuration before touching anything.
			var ops []lb.Op
			if path := c.String("config"); path != "" {
				if ops, err = control.LoadConfigFile(path); err != nil {
					return err
				}
			}
			if c.Int("conn-max") < 1 {
				return fmt.Errorf("--conn-max must be positive")
			}
			be, err := backend.Open(c.String("backend"), backend.Options{
				Ifaces:   c.StringSlice("iface"),
				XDPMode:  c.String("xdp-mode"),
				ConnMax:  c.Int("conn-max"),
				HashSeed: uint32(c.Uint("hash-seed")),
				Logger:   log,
			})
			if err != nil {
				return err
			}
			d := control.NewDaemon(be, c.String("backend"), log)
			d.SetConfigFile(c.String("config"))
			cleanup := func() {
				_ = d.Shutdown()
				_ = be.Close()
			}
			if len(ops) > 0 {
				if err := d.Do(ops); err != nil {
					cleanup()
					return fmt.Errorf("%s: %w", c.String("config"), err)
				}
			}
			srv, err := control.Listen(d, c.String("socket"))
			if err != nil {
				cleanup()
				return err
			}
			log.Info("mbx running", "backend", c.String("backend"), "ifaces", c.StringSlice("iface"), "socket", c.String("socket"))
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			for s := range sig {
				if s == syscall.SIGHUP {
					if err := d.Reload(); err != nil {
						log.Error("reload refused; the running configuration is unchanged", "err", err)
					}
					continue
				}
				log.Info("stopping", "signal", s.String())
				break
			}
			_ = srv.Close()
			cleanup()
			return nil
		},
	}
}

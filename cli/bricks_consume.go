package cli

import (
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

	"github.com/mbx-net/mbx/bricks/xsk"
	"github.com/mbx-net/mbx/control"
)

// consumeCommand reads an AF_XDP output with bricks/xsk: the Go API's
// reference user, and a way to feed a pcap to tools that read files.
func consumeCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "consume",
		Usage:     "read an AF_XDP output (xsk:NAME) in Go: print packets or write a pcap",
		ArgsUsage: "[-w FILE] [-c COUNT] [--duration D] xsk:NAME",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "w", Usage: "write a pcap file (- for stdout) instead of printing"},
			&ucli.IntFlag{Name: "c", Usage: "stop after this many packets (0: no limit)"},
			&ucli.DurationFlag{Name: "duration", Usage: "stop after this long (0: until interrupted)"},
		},
		Action: func(c *ucli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("usage: mbx bricks consume %s", c.Command.ArgsUsage)
			}
			name := c.Args().First()
			if !strings.HasPrefix(name, "xsk:") {
				name = "xsk:" + name
			}
			st, err := control.NewClient(control.SocketPath(c.String("socket"))).BricksStatus()
			if err != nil {
				return err
			}
			var iface string
			var slot uint32
			found := false
			for _, x := range st.XSKs {
				if x.Name == name {
					iface, slot, found = x.Iface, x.Slot, true
				}
			}
			if !found {
				return fmt.Errorf("no running AF_XDP output %s (connect it to a brick of a started engine)", name)
			}
			cons, err := xsk.Attach(iface, slot)
			if err != nil {
				return err
			}
			defer cons.Close()
			var pw *pcapgo.Writer
			out := io.Writer(os.Stdout)
			if f := c.String("w"); f != "" {
				if f != "-" {
					fh, err := os.Create(f)
					if err != nil {
						return err
					}
					defer fh.Close()
					out = fh
				}
				pw = pcapgo.NewWriter(out)
				if err := pw.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
					return err
				}
			}
			fmt.Fprintf(os.Stderr, "listening on %s (%s, slot %d)\n", name, iface, slot)
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(sig)
			var deadline time.Time
			if d := c.Duration("duration"); d > 0 {
				deadline = time.Now().Add(d)
			}
			limit, n := c.Int("c"), 0
			var werr error
			for (limit == 0 || n < limit) && (deadline.IsZero() || time.Now().Before(deadline)) && werr == nil {
				select {
				case <-sig:
					limit = n // stop
					continue
				default:
				}
				_, err := cons.Receive(100*time.Millisecond, func(frame []byte) {
					if (limit != 0 && n >= limit) || werr != nil {
						return
					}
					n++
					if pw != nil {
						werr = pw.WritePacket(gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: len(frame), Length: len(frame)}, frame)
						return
					}
					p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.NoCopy)
					fmt.Fprintf(out, "%s %d bytes %s\n", time.Now().Format("15:04:05.000000"), len(frame), summary(p))
				})
				if err != nil {
					return err
				}
			}
			fmt.Fprintf(os.Stderr, "%d packets received, %d dropped by the kernel\n", n, cons.Dropped())
			return werr
		},
	}
}

func summary(p gopacket.Packet) string {
	var parts []string
	for _, l := range p.Layers() {
		parts = append(parts, l.LayerType().String())
	}
	return strings.Join(parts, "/")
}

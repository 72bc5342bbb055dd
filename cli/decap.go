package cli

import (
	"fmt"
	"net/netip"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/decap"
)

// decapCommand is run on a real server of a tunnel (-i) service.
func decapCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "decap",
		Usage: "on a real server: strip IP-in-IP from mbx's tunnel mode in XDP (this kernel has no ipip device)",
		Description: "Attaches an XDP program to --iface that removes the outer IPv4 header of IP-in-IP packets\n" +
			"(for the --vip addresses only, when given) and passes the inner packet to the stack; the VIP must be\n" +
			"on the real server's loopback (with arp_ignore=1, arp_announce=2), as for DR. The program stays\n" +
			"attached after this command exits; --remove takes it off, --stats prints its counters.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "iface", Required: true, Usage: "interface the tunnelled packets arrive on"},
			&ucli.StringSliceFlag{Name: "vip", Usage: "decapsulate only packets for this VIP (repeatable; default: every IP-in-IP packet)"},
			&ucli.BoolFlag{Name: "remove", Usage: "detach the decap program"},
			&ucli.BoolFlag{Name: "stats", Usage: "print decapsulated/passed/malformed counts"},
			&ucli.StringFlag{Name: "xdp-mode", Value: "native", Usage: "native or generic"},
		},
		Action: func(c *ucli.Context) error {
			iface := c.String("iface")
			switch {
			case c.Bool("remove"):
				return decap.Detach(iface)
			case c.Bool("stats"):
				d, p, m, err := decap.Stats(iface)
				if err != nil {
					return err
				}
				fmt.Printf("decapsulated %d\npassed %d\nmalformed %d\n", d, p, m)
				return nil
			}
			var vips []netip.Addr
			for _, v := range c.StringSlice("vip") {
				a, err := netip.ParseAddr(v)
				if err != nil {
					return fmt.Errorf("--vip %q: not an address", v)
				}
				vips = append(vips, a)
			}
			mode := c.String("xdp-mode")
			if mode != "native" && mode != "generic" {
				return fmt.Errorf("--xdp-mode %q: native or generic", mode)
			}
			return decap.Attach(iface, vips, mode == "generic")
		},
	}
}

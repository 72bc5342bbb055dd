package cli

import (
	"fmt"
	"net/netip"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/lb"
)

func addrCommand() *ucli.Command {
	sock := socketFlag()
	op := func(kind lb.OpKind) ucli.ActionFunc {
		return func(c *ucli.Context) error {
			a := c.Args().Slice()
			if len(a) != 3 || a[1] != "dev" {
				return fmt.Errorf("usage: mbx addr %s ADDR/LEN dev DEV", c.Command.Name)
			}
			p, err := netip.ParsePrefix(a[0])
			if err != nil {
				return fmt.Errorf("malformed address %q (want ADDR/LEN)", a[0])
			}
			return control.NewClient(control.SocketPath(c.String("socket"))).Do([]lb.Op{{Kind: kind, Addr: lb.IfAddr{Prefix: p, Dev: a[2]}}})
		}
	}
	return &ucli.Command{
		Name:  "addr",
		Usage: "put addresses (VIPs) on interfaces through the daemon, like dpip addr",
		Subcommands: []*ucli.Command{
			{Name: "add", Usage: "mbx addr add ADDR/LEN dev DEV", Flags: []ucli.Flag{sock}, Action: op(lb.OpAddAddr)},
			{Name: "del", Usage: "mbx addr del ADDR/LEN dev DEV", Flags: []ucli.Flag{sock}, Action: op(lb.OpDelAddr)},
		},
	}
}

package cli

import (
	"fmt"
	"os"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/keepalived"
	"github.com/mbx-net/mbx/lb"
)

func keepalivedCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "keepalived",
		Usage: "keepalived.conf support",
		Subcommands: []*ucli.Command{{
			Name:  "check",
			Usage: "mbx keepalived check FILE: validate it as mbx reads it; list what mbx does not use",
			Action: func(c *ucli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("usage: mbx keepalived check FILE")
				}
				res, err := keepalived.Load(c.Args().First())
				if err != nil {
					return err
				}
				for _, w := range res.Warnings {
					fmt.Fprintln(os.Stderr, "warning: "+w)
				}
				cfg, err := (&lb.Config{}).Do(res.Ops)
				if err != nil {
					return err
				}
				reals := 0
				for _, s := range cfg.Services {
					reals += len(s.Reals)
				}
				fmt.Printf("%s: ok: %d virtual services, %d real servers, %d warnings\n", c.Args().First(), len(cfg.Services), reals, len(res.Warnings))
				return nil
			},
		}},
	}
}

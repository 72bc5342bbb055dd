package cli

import (
	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/control"
)

func stopCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "stop",
		Usage: "stop the daemon; --keep-datapath leaves it forwarding for the next mbx run (as SIGUSR2)",
		Flags: []ucli.Flag{
			socketFlag(),
			&ucli.BoolFlag{Name: "keep-datapath", Usage: "restart or upgrade without loss"},
		},
		Action: func(c *ucli.Context) error {
			return control.NewClient(control.SocketPath(c.String("socket"))).Stop(c.Bool("keep-datapath"))
		},
	}
}

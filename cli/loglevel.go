package cli

import (
	"fmt"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/control"
)

func logLevelCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "log-level",
		Usage:     "show or change the running daemon's log level",
		ArgsUsage: "[debug|info|warn|error]",
		Flags:     []ucli.Flag{socketFlag()},
		Action: func(c *ucli.Context) error {
			cl := control.NewClient(control.SocketPath(c.String("socket")))
			switch c.NArg() {
			case 0:
				l, err := cl.LogLevel()
				if err == nil {
					fmt.Fprintln(c.App.Writer, l)
				}
				return err
			case 1:
				return cl.SetLogLevel(c.Args().First())
			}
			return fmt.Errorf("log-level takes one level at most")
		},
	}
}

package cli

import (
	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/control"
)

func reloadCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "reload",
		Usage: "re-read the daemon's configuration file and apply the difference (as SIGHUP)",
		Flags: []ucli.Flag{socketFlag()},
		Action: func(c *ucli.Context) error {
			return control.NewClient(control.SocketPath(c.String("socket"))).Reload()
		},
	}
}

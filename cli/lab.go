package cli

import (
	"fmt"
	"sort"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/lab"
)

func labCommand() *ucli.Command {
	name := &ucli.StringFlag{Name: "name", Value: "demo", Usage: "lab instance name"}
	return &ucli.Command{
		Name:  "lab",
		Usage: "build test topologies from network namespaces (198.18.0.0/15 only)",
		Subcommands: []*ucli.Command{
			{
				Name: "up", Usage: "mbx lab up TOPOLOGY: build it and start the built-in HTTP server on each rs",
				Flags: []ucli.Flag{name},
				Action: func(c *ucli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: mbx lab up TOPOLOGY (one of %v)", topoNames())
					}
					t, err := lab.Lookup(c.Args().First())
					if err != nil {
						return err
					}
					l, err := lab.Up(t, c.String("name"), 0)
					if err != nil {
						return err
					}
					if err := l.StartServers(); err != nil {
						l.Down()
						return err
					}
					fmt.Printf("lab %s (%s) is up: %s\nrun commands in it with: ip netns exec %s CMD\n", c.String("name"), t.Name, t.Doc, l.NS("HOST"))
					return nil
				},
			},
			{
				Name: "down", Usage: "remove a lab (every one made by mbx lab up with --name all)",
				Flags: []ucli.Flag{name},
				Action: func(c *ucli.Context) error {
					for _, t := range lab.Topologies {
						for _, n := range lab.Existing() {
							if c.String("name") == "all" || n == c.String("name") {
								(&lab.Lab{Topo: t, Name: n}).Down()
							}
						}
					}
					return nil
				},
			},
			{
				Name: "serve", Usage: "the lab's real-server HTTP server (answers with its name and the client address)",
				Flags: []ucli.Flag{
					&ucli.StringFlag{Name: "name", Value: "rs"},
					&ucli.StringFlag{Name: "listen", Value: ":80"},
				},
				Action: func(c *ucli.Context) error { return lab.ServeHTTP(c.String("name"), c.String("listen")) },
			},
		},
	}
}

func topoNames() []string {
	var n []string
	for k := range lab.Topologies {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

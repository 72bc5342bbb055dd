// Package cli is mbx's command line (urfave/cli/v2). Commands are thin: they
// parse, call the daemon's API (control.Client) or a library, and print.
package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/control"
)

// App returns the mbx command.
func App() *ucli.App {
	return &ucli.App{
		Name:  "mbx",
		Usage: "programmable network middlebox: L4 load balancer, TCP stream monitor, traffic distribution",
		Commands: []*ucli.Command{
			runCommand(),
			ipvsadmCommand(),
			addrCommand(),
			reloadCommand(),
			stopCommand(),
			keepalivedCommand(),
			labCommand(),
			logLevelCommand(),
			captureCommand(),
			traceCommand(),
			bricksCommand(),
			decapCommand(),
			statCommand(),
			monitorCommand(),
		},
		HideHelpCommand: true,
	}
}

// Main runs the app and exits with a one-line error on failure.
func Main() {
	if err := App().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "mbx: "+strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
}

// socketFlag is the control-socket flag of every client command.
func socketFlag() *ucli.StringFlag {
	return &ucli.StringFlag{Name: "socket", EnvVars: []string{"MBX_SOCKET"}, Usage: "control socket (default " + control.DefaultSocket + ")"}
}

// newLogger logs to stderr in format (text or json) from level on; the
// returned LevelVar changes the level at run time (`mbx log-level`).
func newLogger(level, format string) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("bad --log-level %q (debug, info, warn, error)", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), lv, nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), lv, nil
	}
	return nil, nil, fmt.Errorf("bad --log-format %q (text or json)", format)
}

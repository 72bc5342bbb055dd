package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/cli/ipvsadm"
	"github.com/mbx-net/mbx/control"
)

func ipvsadmCommand() *ucli.Command {
	return &ucli.Command{
		Name:            "ipvsadm",
		Usage:           "ipvsadm-compatible client of the daemon (mbx ipvsadm -h)",
		SkipFlagParsing: true,
		Action: func(c *ucli.Context) error {
			return runIpvsadm(c.Args().Slice(), os.Stdin, os.Stdout)
		},
	}
}

func runIpvsadm(args []string, stdin io.Reader, stdout io.Writer) error {
	sock := ""
	if len(args) > 0 && (args[0] == "--socket" || strings.HasPrefix(args[0], "--socket=")) {
		if v, ok := strings.CutPrefix(args[0], "--socket="); ok {
			sock, args = v, args[1:]
		} else if len(args) > 1 {
			sock, args = args[1], args[2:]
		} else {
			return errors.New("--socket needs a path")
		}
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stdout, ipvsadm.Usage)
		return nil
	}
	cmd, err := ipvsadm.Parse(args)
	if err != nil {
		return err
	}
	cl := control.NewClient(control.SocketPath(sock))
	switch cmd.Action {
	case ipvsadm.ActionOps:
		return cl.DoCommand("ipvsadm "+strings.Join(args, " "), cmd.Ops)
	case ipvsadm.ActionRestore:
		text, err := io.ReadAll(stdin)
		if err != nil {
			return err
		}
		ops, err := ipvsadm.ParseLines(string(text))
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if len(ops) == 0 {
			return nil
		}
		return cl.DoCommand("ipvsadm -R", ops)
	case ipvsadm.ActionSave:
		cfg, err := cl.Config()
		if err != nil {
			return err
		}
		ipvsadm.Save(stdout, cmd, cfg)
	case ipvsadm.ActionGetLaddr:
		st, err := cl.Status()
		if err != nil {
			return err
		}
		ipvsadm.GetLaddr(stdout, cmd, st)
	case ipvsadm.ActionList:
		if cmd.Timeout {
			st, err := cl.Status()
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "Timeout (tcp tcpfin udp): %d %d %d\n", st.Timeouts.TCP, st.Timeouts.TCPFin, st.Timeouts.UDP)
			return nil
		}
		if cmd.Conns {
			conns, err := cl.Conns(0)
			if err != nil {
				return err
			}
			ipvsadm.Conns(stdout, cmd, conns)
			return nil
		}
		st, err := cl.Status()
		if err != nil {
			return err
		}
		ipvsadm.List(stdout, cmd, st)
	}
	return nil
}

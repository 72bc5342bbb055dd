package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	ucli "github.com/urfave/cli/v2"

	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/control"
)

// brickVerb is one `mbx bricks` verb: its positional arguments and the
// flags it takes. Flags may follow the arguments, as in packet-bricks'
// examples (`mbx bricks add lb0 loadbalancer --hash 4tuple`), which
// urfave/cli's parser does not allow, so these verbs parse their own.
type brickVerb struct {
	name, usage, args string
	min, max          int // positional arguments; max -1: any number
	flags             []string
	ops               func(pos []string, fl map[string]string) ([]bricks.Op, error)
}

var brickVerbs = []brickVerb{
	{name: "add", usage: "create a brick", args: "NAME TYPE [--hash 2tuple|4tuple] [--filter EXPR]", min: 2, max: 2,
		flags: []string{"hash", "filter"},
		ops: func(p []string, fl map[string]string) ([]bricks.Op, error) {
			return []bricks.Op{{Verb: "add", Name: p[0], Kind: p[1], Hash: fl["hash"], Filter: fl["filter"]}}, nil
		}},
	{name: "del", usage: "delete a brick", args: "NAME", min: 1, max: 1, ops: simple("del")},
	{name: "connect-input", usage: "name the interfaces a brick reads", args: "BRICK IF...", min: 2, max: -1, ops: withArgs("connect-input")},
	{name: "connect-output", usage: "add outputs (interfaces, IF}N pipes mbx creates, or bricks)", args: "BRICK OUTPUT...", min: 2, max: -1, ops: withArgs("connect-output")},
	{name: "disconnect-output", usage: "remove outputs", args: "BRICK OUTPUT...", min: 2, max: -1, ops: withArgs("disconnect-output")},
	{name: "link", usage: "link a brick to an engine", args: "ENGINE BRICK", min: 2, max: 2, ops: withArgs("link")},
	{name: "unlink", usage: "unlink an engine's brick", args: "ENGINE", min: 1, max: 1, ops: simple("unlink")},
	{name: "start", usage: "start an engine", args: "ENGINE", min: 1, max: 1, ops: simple("start")},
	{name: "stop", usage: "stop an engine", args: "ENGINE", min: 1, max: 1, ops: simple("stop")},
	{name: "load-balance", usage: "one-liner: split IF's flows over N pipes IF}0..IF}N-1 (packet-bricks' bricks-load-balance)",
		args: "IF N [--hash 2tuple|4tuple]", min: 2, max: 2, flags: []string{"hash"},
		ops: func(p []string, fl map[string]string) ([]bricks.Op, error) {
			n, err := strconv.Atoi(p[1])
			if err != nil {
				return nil, fmt.Errorf("N: %q is not a number", p[1])
			}
			return bricks.OneLiner(bricks.LoadBalancer, p[0], n, fl["hash"])
		}},
	{name: "duplicate", usage: "one-liner: copy IF's traffic to N pipes IF}0..IF}N-1 (packet-bricks' bricks-duplicate)",
		args: "IF N", min: 2, max: 2,
		ops: func(p []string, fl map[string]string) ([]bricks.Op, error) {
			n, err := strconv.Atoi(p[1])
			if err != nil {
				return nil, fmt.Errorf("N: %q is not a number", p[1])
			}
			return bricks.OneLiner(bricks.Duplicator, p[0], n, "")
		}},
}

var engineVerbs = []brickVerb{
	{name: "add", usage: "create a packet engine on an interface", args: "NAME --iface IF [--cpu N]", min: 1, max: 1,
		flags: []string{"iface", "cpu"},
		ops: func(p []string, fl map[string]string) ([]bricks.Op, error) {
			op := bricks.Op{Verb: "engine-add", Name: p[0], Iface: fl["iface"]}
			if op.Iface == "" {
				return nil, fmt.Errorf("engine add %s: --iface IF is required", p[0])
			}
			if s, ok := fl["cpu"]; ok {
				n, err := strconv.Atoi(s)
				if err != nil {
					return nil, fmt.Errorf("--cpu: %q is not a number", s)
				}
				op.CPU = &n
			}
			return []bricks.Op{op}, nil
		}},
	{name: "del", usage: "delete a packet engine", args: "NAME", min: 1, max: 1, ops: simple("engine-del")},
}

func simple(verb string) func([]string, map[string]string) ([]bricks.Op, error) {
	return func(p []string, _ map[string]string) ([]bricks.Op, error) {
		return []bricks.Op{{Verb: verb, Name: p[0]}}, nil
	}
}

func withArgs(verb string) func([]string, map[string]string) ([]bricks.Op, error) {
	return func(p []string, _ map[string]string) ([]bricks.Op, error) {
		return []bricks.Op{{Verb: verb, Name: p[0], Args: p[1:]}}, nil
	}
}

// parseVerbArgs splits args into positional arguments and the verb's
// flags (--name VALUE or --name=VALUE, anywhere); --socket is every verb's.
func parseVerbArgs(v brickVerb, args []string) (pos []string, fl map[string]string, err error) {
	fl = map[string]string{}
	known := append([]string{"socket"}, v.flags...)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !contains(known, name) {
			return nil, nil, fmt.Errorf("%s: unknown flag %s (usage: %s)", v.name, a, v.args)
		}
		if !hasVal {
			if i+1 >= len(args) {
				return nil, nil, fmt.Errorf("%s: flag --%s needs a value", v.name, name)
			}
			i++
			val = args[i]
		}
		fl[name] = val
	}
	if len(pos) < v.min || (v.max >= 0 && len(pos) > v.max) {
		return nil, nil, fmt.Errorf("usage: mbx bricks %s %s", v.name, v.args)
	}
	return pos, fl, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func verbCommands(vs []brickVerb, prefix string) []*ucli.Command {
	var cmds []*ucli.Command
	for _, v := range vs {
		cmds = append(cmds, &ucli.Command{
			Name:            v.name,
			Usage:           v.usage,
			ArgsUsage:       v.args,
			SkipFlagParsing: true,
			Action: func(c *ucli.Context) error {
				pos, fl, err := parseVerbArgs(v, c.Args().Slice())
				if err != nil {
					return err
				}
				ops, err := v.ops(pos, fl)
				if err != nil {
					return err
				}
				sock := c.String("socket")
				if s, ok := fl["socket"]; ok {
					sock = s
				}
				command := strings.TrimSpace("bricks " + prefix + v.name + " " + strings.Join(c.Args().Slice(), " "))
				return control.NewClient(control.SocketPath(sock)).Bricks(command, ops)
			},
		})
	}
	return cmds
}

func bricksCommand() *ucli.Command {
	jsonFlag := &ucli.BoolFlag{Name: "json", Usage: "print JSON"}
	cmds := verbCommands(brickVerbs, "")
	cmds = append(cmds,
		consumeCommand(),
		&ucli.Command{Name: "engine", Usage: "packet engines (one per input interface)", Subcommands: verbCommands(engineVerbs, "engine ")},
		&ucli.Command{Name: "show", Usage: "engines and bricks", Flags: []ucli.Flag{jsonFlag},
			Action: func(c *ucli.Context) error {
				st, err := control.NewClient(control.SocketPath(c.String("socket"))).BricksStatus()
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(st.Model)
				}
				printBricks(st)
				return nil
			}},
		&ucli.Command{Name: "stats", Usage: "packets, bytes and drops per brick and per output", Flags: []ucli.Flag{jsonFlag},
			Action: func(c *ucli.Context) error {
				st, err := control.NewClient(control.SocketPath(c.String("socket"))).BricksStatus()
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(st.Stats)
				}
				printBrickStats(st.Stats)
				return nil
			}},
	)
	return &ucli.Command{
		Name:        "bricks",
		Usage:       "flow-aware traffic distribution to tools (packet-bricks): engines, bricks, outputs",
		Flags:       []ucli.Flag{socketFlag()},
		Subcommands: cmds,
	}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printBricks(st *control.BricksStatus) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENGINE\tIFACE\tCPU\tSTATE\tLINK")
	for _, e := range st.Engines {
		cpu, state := "-", "stopped"
		if e.CPU != nil {
			cpu = strconv.Itoa(*e.CPU)
		}
		if e.Running {
			state = "running"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Name, e.Iface, cpu, state, dash(e.Link))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "BRICK\tTYPE\tPARAMS\tINPUTS\tOUTPUTS")
	for _, b := range st.Bricks {
		params := string(b.Hash)
		if b.Kind == bricks.Filter {
			params = strconv.Quote(b.Filter)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Name, b.Kind, dash(params), dash(strings.Join(b.Inputs, ",")), dash(strings.Join(b.Outputs, ",")))
	}
	tw.Flush()
}

func printBrickStats(rows []control.BrickStat) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "BRICK\tOUTPUT\tPACKETS\tBYTES\tDROPS\tSKIPPED\tIF_DROPS\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t\n", r.Brick, dash(r.Output), r.Pkts, r.Bytes, r.Drops, r.Skipped, r.IfDrops)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

package bricks

import (
	"fmt"
	"slices"
	"strings"
)

// Op is one verb of `mbx bricks` (packet-bricks' shell verbs).
type Op struct {
	Verb   string   `json:"verb"`
	Name   string   `json:"name"`
	Args   []string `json:"args,omitempty"`
	Iface  string   `json:"iface,omitempty"`
	CPU    *int     `json:"cpu,omitempty"`
	Kind   string   `json:"type,omitempty"`
	Hash   string   `json:"hash,omitempty"`
	Filter string   `json:"filter,omitempty"`
}

// Verbs lists what Apply understands.
var Verbs = []string{"engine-add", "engine-del", "add", "del", "connect-input", "connect-output",
	"disconnect-output", "link", "unlink", "start", "stop"}

// Apply performs op on m. Changing a brick that a running engine uses, or
// relinking a running engine, is refused (as packet-bricks refuses unlink
// while running); Validate checks the result as a whole.
func (m *Model) Apply(op Op) error {
	switch op.Verb {
	case "engine-add":
		if m.engine(op.Name) != nil || m.brick(op.Name) != nil {
			return fmt.Errorf("name %q is already in use", op.Name)
		}
		m.Engines = append(m.Engines, Engine{Name: op.Name, Iface: op.Iface, CPU: op.CPU})
		return nil
	case "add":
		if m.engine(op.Name) != nil || m.brick(op.Name) != nil {
			return fmt.Errorf("name %q is already in use", op.Name)
		}
		k, err := ParseKind(op.Kind)
		if err != nil {
			return err
		}
		b := Brick{Name: op.Name, Kind: k, Filter: op.Filter}
		if k == LoadBalancer {
			b.Hash = Hash2Tuple
			if op.Hash != "" {
				b.Hash = Hash(strings.ToLower(op.Hash))
			}
		} else if op.Hash != "" {
			return fmt.Errorf("--hash is for a loadbalancer, not a %s", k)
		}
		if k != Filter && op.Filter != "" {
			return fmt.Errorf("--filter is for a filter brick, not a %s", k)
		}
		m.Bricks = append(m.Bricks, b)
		return nil
	}

	if e := m.engine(op.Name); e != nil {
		return m.applyEngine(e, op)
	}
	b := m.brick(op.Name)
	if b == nil {
		return fmt.Errorf("no engine or brick called %q", op.Name)
	}
	if op.Verb != "del" && op.Verb != "connect-input" && op.Verb != "connect-output" && op.Verb != "disconnect-output" {
		return fmt.Errorf("%s is a brick: %s applies to an engine", op.Name, op.Verb)
	}
	if users := m.runningUsers(b.Name); len(users) > 0 {
		return fmt.Errorf("brick %s is in use by running engine %s: stop it first", b.Name, strings.Join(users, ", "))
	}
	switch op.Verb {
	case "del":
		for _, e := range m.Engines {
			if e.Link == b.Name {
				return fmt.Errorf("brick %s is linked to engine %s: unlink it first", b.Name, e.Name)
			}
		}
		for _, o := range m.Bricks {
			if slices.Contains(o.Outputs, b.Name) {
				return fmt.Errorf("brick %s is an output of brick %s", b.Name, o.Name)
			}
		}
		m.Bricks = slices.DeleteFunc(m.Bricks, func(x Brick) bool { return x.Name == op.Name })
	case "connect-input":
		if len(op.Args) == 0 {
			return fmt.Errorf("%w: connect-input BRICK IF...", ErrUsage)
		}
		for _, a := range op.Args {
			if !slices.Contains(b.Inputs, a) {
				b.Inputs = append(b.Inputs, a)
			}
		}
	case "connect-output":
		if len(op.Args) == 0 {
			return fmt.Errorf("%w: connect-output BRICK OUTPUT...", ErrUsage)
		}
		for _, a := range op.Args {
			if a == b.Name {
				return fmt.Errorf("brick %s cannot output to itself", b.Name)
			}
			if m.engine(a) != nil {
				return fmt.Errorf("%s is an engine: an output is an interface or a brick", a)
			}
			if slices.Contains(b.Outputs, a) {
				return fmt.Errorf("brick %s already outputs to %s", b.Name, a)
			}
			b.Outputs = append(b.Outputs, a)
		}
	case "disconnect-output":
		for _, a := range op.Args {
			if !slices.Contains(b.Outputs, a) {
				return fmt.Errorf("brick %s has no output %s", b.Name, a)
			}
			b.Outputs = slices.DeleteFunc(b.Outputs, func(x string) bool { return x == a })
		}
	}
	return nil
}

func (m *Model) applyEngine(e *Engine, op Op) error {
	switch op.Verb {
	case "engine-del":
		if e.Running {
			return fmt.Errorf("engine %s is running: stop it first", e.Name)
		}
		m.Engines = slices.DeleteFunc(m.Engines, func(x Engine) bool { return x.Name == op.Name })
	case "link":
		if e.Running {
			return fmt.Errorf("engine %s is running: stop it before linking", e.Name)
		}
		if len(op.Args) != 1 {
			return fmt.Errorf("%w: link ENGINE BRICK", ErrUsage)
		}
		if m.brick(op.Args[0]) == nil {
			return fmt.Errorf("no brick called %q", op.Args[0])
		}
		e.Link = op.Args[0]
	case "unlink":
		if e.Running {
			return fmt.Errorf("engine %s is running: stop it before unlinking", e.Name)
		}
		if e.Link == "" {
			return fmt.Errorf("engine %s has nothing linked", e.Name)
		}
		e.Link = ""
	case "start":
		if e.Running {
			return fmt.Errorf("engine %s is already running", e.Name)
		}
		e.Running = true
	case "stop":
		if !e.Running {
			return fmt.Errorf("engine %s is not running", e.Name)
		}
		e.Running = false
	default:
		return fmt.Errorf("%s is an engine: %s applies to a brick", e.Name, op.Verb)
	}
	return nil
}

// OneLiner builds the ops of packet-bricks' `bricks-load-balance IF N` and
// `bricks-duplicate IF N`: an engine named after IF, one brick, N pipes
// IF}0..IF}N-1, linked and started.
func OneLiner(kind Kind, iface string, n int, hash string) ([]Op, error) {
	if n < 1 || n > MaxOutputs {
		return nil, fmt.Errorf("outputs: %d (1 to %d)", n, MaxOutputs)
	}
	brick := iface + "-" + map[Kind]string{LoadBalancer: "lb", Duplicator: "dup"}[kind]
	ops := []Op{
		{Verb: "engine-add", Name: iface, Iface: iface},
		{Verb: "add", Name: brick, Kind: string(kind), Hash: hash},
	}
	var outs []string
	for i := range n {
		outs = append(outs, fmt.Sprintf("%s}%d", iface, i))
	}
	ops = append(ops,
		Op{Verb: "connect-input", Name: brick, Args: []string{iface}},
		Op{Verb: "connect-output", Name: brick, Args: outs},
		Op{Verb: "link", Name: iface, Args: []string{brick}},
		Op{Verb: "start", Name: iface})
	return ops, nil
}

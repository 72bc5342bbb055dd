// Package bricks is packet-bricks' model on mbx: packet engines on input
// interfaces, each linked to a tree of bricks (LoadBalancer, Duplicator,
// Merge, Filter) whose leaves are output interfaces. The model is changed by
// verbs (packet-bricks' shell, as `mbx bricks ...`) or from the YAML
// config, validated whole, and flattened into a Plan that a backend runs.
// No backend-specific logic lives here.
package bricks

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/mbx-net/mbx/filter"
)

// Kind is a brick type.
type Kind string

const (
	LoadBalancer Kind = "loadbalancer"
	Duplicator   Kind = "duplicator"
	Merge        Kind = "merge"
	Filter       Kind = "filter"
)

// Kinds lists the brick types.
var Kinds = []Kind{LoadBalancer, Duplicator, Merge, Filter}

// ParseKind accepts packet-bricks' names in any case ("LoadBalancer").
func ParseKind(s string) (Kind, error) {
	k := Kind(strings.ToLower(s))
	if slices.Contains(Kinds, k) {
		return k, nil
	}
	return "", fmt.Errorf("unknown brick type %q (have loadbalancer, duplicator, merge, filter)", s)
}

// Hash is how a LoadBalancer keys flows.
type Hash string

const (
	Hash2Tuple Hash = "2tuple" // source and destination address (packet-bricks' default)
	Hash4Tuple Hash = "4tuple" // and the ports
)

// MaxOutputs is the most outputs one brick has (bricks.h BRICK_CHILDREN).
const MaxOutputs = 64

// MaxDepth is the most bricks an engine's path goes through (BRICK_DEPTH,
// counting the output).
const MaxDepth = 8

// Brick is one brick.
type Brick struct {
	Name    string   `json:"name" yaml:"name"`
	Kind    Kind     `json:"type" yaml:"type"`
	Hash    Hash     `json:"hash,omitempty" yaml:"hash,omitempty"`
	Filter  string   `json:"filter,omitempty" yaml:"filter,omitempty"`
	Inputs  []string `json:"inputs,omitempty" yaml:"inputs,omitempty"`   // interfaces it reads (connect-input)
	Outputs []string `json:"outputs,omitempty" yaml:"outputs,omitempty"` // interfaces or bricks (connect-output)
}

// Engine reads one interface and feeds its linked brick.
type Engine struct {
	Name    string `json:"name" yaml:"name"`
	Iface   string `json:"iface" yaml:"iface"`
	CPU     *int   `json:"cpu,omitempty" yaml:"cpu,omitempty"` // pin the interface's receive processing
	Link    string `json:"link,omitempty" yaml:"link,omitempty"`
	Running bool   `json:"running" yaml:"start,omitempty"`
}

// Model is the whole brick configuration.
type Model struct {
	Engines []Engine `json:"engines" yaml:"engines"`
	Bricks  []Brick  `json:"bricks" yaml:"bricks"`
}

// Env is what validation needs from the machine.
type Env struct {
	LinkExists func(name string) bool
	NumCPU     int
}

// Clone returns a deep copy.
func (m *Model) Clone() *Model {
	c := &Model{}
	for _, e := range m.Engines {
		if e.CPU != nil {
			v := *e.CPU
			e.CPU = &v
		}
		c.Engines = append(c.Engines, e)
	}
	for _, b := range m.Bricks {
		b.Inputs = slices.Clone(b.Inputs)
		b.Outputs = slices.Clone(b.Outputs)
		c.Bricks = append(c.Bricks, b)
	}
	return c
}

func (m *Model) engine(name string) *Engine {
	for i := range m.Engines {
		if m.Engines[i].Name == name {
			return &m.Engines[i]
		}
	}
	return nil
}

func (m *Model) brick(name string) *Brick {
	for i := range m.Bricks {
		if m.Bricks[i].Name == name {
			return &m.Bricks[i]
		}
	}
	return nil
}

// Engine returns the engine called name, or nil.
func (m *Model) Engine(name string) *Engine { return m.engine(name) }

// Brick returns the brick called name, or nil.
func (m *Model) Brick(name string) *Brick { return m.brick(name) }

// PipeHost is the interface mbx keeps of an output pipe it creates: a
// packet-bricks-style name IF}N is the end a tool opens, IF{N the end mbx
// sends into (netmap's pipe naming, which Linux accepts).
func PipeHost(output string) string { return strings.Replace(output, "}", "{", 1) }

// IsPipe reports whether output names a pipe mbx creates when missing.
func IsPipe(output string) bool { return strings.Contains(output, "}") }

// IsXSK reports whether output names an AF_XDP output ("xsk:NAME"), read
// by a Go program through bricks/xsk.
func IsXSK(output string) bool { return strings.HasPrefix(output, "xsk:") }

func (m *Model) xskOutputs() []string {
	var x []string
	for _, b := range m.Bricks {
		for _, o := range b.Outputs {
			if IsXSK(o) && !slices.Contains(x, o) {
				x = append(x, o)
			}
		}
	}
	sort.Strings(x)
	return x
}

// Pipes lists the output pipes the model uses.
func (m *Model) Pipes() []string {
	var p []string
	for _, b := range m.Bricks {
		for _, o := range b.Outputs {
			if m.brick(o) == nil && IsPipe(o) && !slices.Contains(p, o) {
				p = append(p, o)
			}
		}
	}
	sort.Strings(p)
	return p
}

// running reports the engines whose trees contain brick name.
func (m *Model) runningUsers(name string) []string {
	var users []string
	for _, e := range m.Engines {
		if e.Running && e.Link != "" && slices.Contains(m.reachable(e.Link), name) {
			users = append(users, e.Name)
		}
	}
	return users
}

// reachable lists the bricks reachable from root (root included), without
// looping on cycles.
func (m *Model) reachable(root string) []string {
	var out []string
	var walk func(string)
	walk = func(n string) {
		if slices.Contains(out, n) {
			return
		}
		b := m.brick(n)
		if b == nil {
			return
		}
		out = append(out, n)
		for _, o := range b.Outputs {
			walk(o)
		}
	}
	walk(root)
	return out
}

func validName(kind, n string) error {
	if n == "" {
		return fmt.Errorf("%s name is empty", kind)
	}
	if len(n) > 32 || strings.ContainsAny(n, " \t/:") {
		return fmt.Errorf("%s name %q: at most 32 characters, no spaces, '/' or ':'", kind, n)
	}
	return nil
}

// Validate checks the whole model: every name resolves, the bricks have the
// outputs their type needs, no cycles, and every running engine's tree fits
// the datapath.
func (m *Model) Validate(env Env) error {
	seen := map[string]string{}
	for _, e := range m.Engines {
		if err := validName("engine", e.Name); err != nil {
			return err
		}
		if seen[e.Name] != "" {
			return fmt.Errorf("name %q is used twice", e.Name)
		}
		seen[e.Name] = "engine"
	}
	ifaceEngine := map[string]string{}
	for _, e := range m.Engines {
		if e.Iface == "" {
			return fmt.Errorf("engine %s: no interface (--iface)", e.Name)
		}
		if env.LinkExists != nil && !env.LinkExists(e.Iface) {
			return fmt.Errorf("engine %s: interface %s does not exist", e.Name, e.Iface)
		}
		if other := ifaceEngine[e.Iface]; other != "" {
			return fmt.Errorf("engines %s and %s both read %s: one engine per interface", other, e.Name, e.Iface)
		}
		ifaceEngine[e.Iface] = e.Name
		if e.CPU != nil && (*e.CPU < 0 || (env.NumCPU > 0 && *e.CPU >= env.NumCPU)) {
			return fmt.Errorf("engine %s: cpu %d does not exist (this machine has %d)", e.Name, *e.CPU, env.NumCPU)
		}
		if e.Link != "" && m.brick(e.Link) == nil {
			return fmt.Errorf("engine %s: linked brick %s does not exist", e.Name, e.Link)
		}
		if e.Running && e.Link == "" {
			return fmt.Errorf("engine %s: nothing linked to run (mbx bricks link %s BRICK)", e.Name, e.Name)
		}
	}
	for _, b := range m.Bricks {
		if err := validName("brick", b.Name); err != nil {
			return err
		}
		if seen[b.Name] != "" {
			return fmt.Errorf("name %q is used twice", b.Name)
		}
		seen[b.Name] = "brick"
		if _, err := ParseKind(string(b.Kind)); err != nil {
			return fmt.Errorf("brick %s: %w", b.Name, err)
		}
		if b.Kind == LoadBalancer && b.Hash != Hash2Tuple && b.Hash != Hash4Tuple {
			return fmt.Errorf("brick %s: hash %q (2tuple or 4tuple)", b.Name, b.Hash)
		}
		if b.Kind != LoadBalancer && b.Hash != "" {
			return fmt.Errorf("brick %s: only a loadbalancer has a hash", b.Name)
		}
		if b.Kind == Filter {
			if _, err := filter.Compile(b.Filter); err != nil {
				return fmt.Errorf("brick %s: %w", b.Name, err)
			}
		} else if b.Filter != "" {
			return fmt.Errorf("brick %s: only a filter brick has a filter expression", b.Name)
		}
		if len(b.Outputs) > MaxOutputs {
			return fmt.Errorf("brick %s: %d outputs, at most %d", b.Name, len(b.Outputs), MaxOutputs)
		}
		if (b.Kind == Filter || b.Kind == Merge) && len(b.Outputs) > 1 {
			return fmt.Errorf("brick %s: a %s has one output, not %d", b.Name, b.Kind, len(b.Outputs))
		}
		for i, o := range b.Outputs {
			if slices.Contains(b.Outputs[:i], o) {
				return fmt.Errorf("brick %s: output %s listed twice", b.Name, o)
			}
			if IsXSK(o) {
				if b.Kind == Duplicator {
					return fmt.Errorf("brick %s: a duplicator cannot copy to an AF_XDP output (%s)", b.Name, o)
				}
				if err := validName("AF_XDP output", strings.TrimPrefix(o, "xsk:")); err != nil {
					return fmt.Errorf("brick %s: %w", b.Name, err)
				}
				continue
			}
			if m.brick(o) != nil {
				if b.Kind == Duplicator {
					return fmt.Errorf("brick %s: a duplicator's outputs are interfaces, not bricks (%s): XDP sends copies only to devices", b.Name, o)
				}
				continue
			}
			if err := validOutput(o, env); err != nil {
				return fmt.Errorf("brick %s: %w", b.Name, err)
			}
		}
		for _, in := range b.Inputs {
			if env.LinkExists != nil && !env.LinkExists(in) {
				return fmt.Errorf("brick %s: input interface %s does not exist", b.Name, in)
			}
		}
	}
	if err := m.checkCycles(); err != nil {
		return err
	}
	// An AF_XDP socket binds to one interface: one engine per xsk output.
	reach := map[string]string{}
	for _, e := range m.Engines {
		if !e.Running {
			continue
		}
		for _, n := range m.reachable(e.Link) {
			for _, o := range m.brick(n).Outputs {
				if !IsXSK(o) {
					continue
				}
				if other, ok := reach[o]; ok && other != e.Iface {
					return fmt.Errorf("%s is reached from %s and %s: an AF_XDP output serves one interface", o, other, e.Iface)
				}
				reach[o] = e.Iface
			}
		}
	}
	for _, e := range m.Engines {
		if !e.Running {
			continue
		}
		for _, n := range m.reachable(e.Link) {
			b := m.brick(n)
			if len(b.Outputs) == 0 {
				return fmt.Errorf("engine %s: brick %s has no output (mbx bricks connect-output %s IF)", e.Name, n, n)
			}
			if len(b.Inputs) > 0 && n == e.Link && !slices.Contains(b.Inputs, e.Iface) {
				return fmt.Errorf("engine %s reads %s, but brick %s's inputs are %s", e.Name, e.Iface, n, strings.Join(b.Inputs, ","))
			}
		}
		if d := m.depth(e.Link); d+1 > MaxDepth {
			return fmt.Errorf("engine %s: %d bricks deep, at most %d", e.Name, d, MaxDepth-1)
		}
	}
	return nil
}

func validOutput(o string, env Env) error {
	if IsPipe(o) {
		if len(o) > 15 {
			return fmt.Errorf("output %s: interface names have at most 15 characters", o)
		}
		if strings.Count(o, "}") != 1 || strings.ContainsAny(o, " /:{") {
			return fmt.Errorf("output %s: a pipe is named IF}N", o)
		}
		return nil
	}
	if env.LinkExists != nil && !env.LinkExists(o) {
		return fmt.Errorf("output %s is neither a brick nor an interface (name a pipe IF}N to have mbx create it)", o)
	}
	return nil
}

func (m *Model) depth(n string) int {
	b := m.brick(n)
	if b == nil {
		return 0
	}
	d := 0
	for _, o := range b.Outputs {
		d = max(d, m.depth(o))
	}
	return d + 1
}

func (m *Model) checkCycles() error {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var path []string
	var visit func(string) error
	visit = func(n string) error {
		b := m.brick(n)
		if b == nil {
			return nil
		}
		switch color[n] {
		case grey:
			i := slices.Index(path, n)
			return fmt.Errorf("bricks form a cycle: %s -> %s", strings.Join(path[i:], " -> "), n)
		case black:
			return nil
		}
		color[n] = grey
		path = append(path, n)
		for _, o := range b.Outputs {
			if err := visit(o); err != nil {
				return err
			}
		}
		path = path[:len(path)-1]
		color[n] = black
		return nil
	}
	for _, b := range m.Bricks {
		if err := visit(b.Name); err != nil {
			return err
		}
	}
	return nil
}

// ErrUsage marks an error in a verb's arguments.
var ErrUsage = errors.New("usage")

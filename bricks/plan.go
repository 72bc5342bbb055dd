package bricks

import (
	"fmt"
	"slices"
	"sort"

	"github.com/mbx-net/mbx/filter"
)

// NodeKind is a node of the flattened tree (bricks.h BRICK_*).
type NodeKind uint8

const (
	NodeOutput NodeKind = 1
	NodeFilter NodeKind = 2
	NodeLB     NodeKind = 3
	NodeDup    NodeKind = 4
	NodeMerge  NodeKind = 5
	NodeXSK    NodeKind = 6 // an AF_XDP output (bricks/xsk)
)

var kindNode = map[Kind]NodeKind{LoadBalancer: NodeLB, Duplicator: NodeDup, Merge: NodeMerge, Filter: NodeFilter}

// Node is one node of a running tree. Every brick is a node, and so is each
// of its interface outputs, so each output has counters of its own.
type Node struct {
	ID       uint32
	Kind     NodeKind
	Hash     Hash
	Children []uint32
	Dup      uint32         // Duplicator: its port set; XSK: its socket slot
	Device   string         // Output: the interface mbx sends into
	Filter   *filter.Filter // Filter
	Label    string         // "lb0", or "lb0>eth3}0" for an output of lb0
	Brick    string
	Output   string // Output: as the user named it (a pipe's tool end)
}

// PlanEngine is a running engine.
type PlanEngine struct {
	Name  string
	Iface string
	CPU   *int
	Root  uint32
}

// Plan is what a backend runs: the running engines and every node their
// trees reach.
type Plan struct {
	Engines []PlanEngine
	Nodes   []Node // by ID
	XSKs    []PlanXSK
}

// PlanXSK is an AF_XDP output: its sockets bind to Iface's receive queues
// and sit in the datapath's socket map from Slot * XSKQueues on.
type PlanXSK struct {
	Name  string `json:"name"`
	Iface string `json:"iface"`
	Slot  uint32 `json:"slot"`
}

// XSKQueues is how many receive queues of its engine's interface an
// AF_XDP output serves (bricks.h XSK_QUEUES).
const XSKQueues = 8

// Planner flattens models into plans, keeping each brick's and output's
// node id (and each Duplicator's port-set id) for as long as it exists, so
// a new plan never renumbers a tree an engine is running.
type Planner struct {
	nodes map[string]uint32
	dups  map[string]uint32
	xsks  map[string]uint32
}

// MaxNodes and MaxDups bound the ids (bricks.h BRICK_NODES, BRICK_DUPS).
const (
	MaxNodes = 1024
	MaxDups  = 64
	MaxXSKs  = 64
)

func outputLabel(brick, out string) string { return brick + ">" + out }

func alloc(ids map[string]uint32, label string, first, limit uint32) (uint32, bool) {
	if id, ok := ids[label]; ok {
		return id, true
	}
	used := map[uint32]bool{}
	for _, id := range ids {
		used[id] = true
	}
	for id := first; id < limit; id++ {
		if !used[id] {
			ids[label] = id
			return id, true
		}
	}
	return 0, false
}

// Plan flattens m (already validated). It fails only when the ids run out.
func (p *Planner) Plan(m *Model) (*Plan, error) {
	if p.nodes == nil {
		p.nodes, p.dups, p.xsks = map[string]uint32{}, map[string]uint32{}, map[string]uint32{}
	}
	// Forget what no longer exists, so its ids can be reused.
	live := map[string]bool{}
	for _, b := range m.Bricks {
		live[b.Name] = true
		for _, o := range b.Outputs {
			if m.brick(o) == nil {
				live[outputLabel(b.Name, o)] = true
			}
		}
	}
	for l := range p.nodes {
		if !live[l] {
			delete(p.nodes, l)
		}
	}
	for l := range p.dups {
		if b := m.brick(l); b == nil || b.Kind != Duplicator {
			delete(p.dups, l)
		}
	}
	xsks := m.xskOutputs()
	for l := range p.xsks {
		if !slices.Contains(xsks, l) {
			delete(p.xsks, l)
		}
	}
	for _, x := range xsks {
		if _, ok := alloc(p.xsks, x, 0, MaxXSKs); !ok {
			return nil, errTooMany("AF_XDP outputs", MaxXSKs)
		}
	}
	// Ids in a stable order, so equal configs number alike.
	var labels []string
	for _, b := range m.Bricks {
		labels = append(labels, b.Name)
		for _, o := range b.Outputs {
			if m.brick(o) == nil {
				labels = append(labels, outputLabel(b.Name, o))
			}
		}
	}
	sort.Strings(labels)
	for _, l := range labels {
		if _, ok := alloc(p.nodes, l, 1, MaxNodes); !ok {
			return nil, errTooMany("bricks and outputs", MaxNodes-1)
		}
	}
	for _, b := range m.Bricks {
		if b.Kind == Duplicator {
			if _, ok := alloc(p.dups, b.Name, 0, MaxDups); !ok {
				return nil, errTooMany("duplicators", MaxDups)
			}
		}
	}

	plan := &Plan{}
	nodes := map[uint32]Node{}
	for _, e := range m.Engines {
		if !e.Running {
			continue
		}
		plan.Engines = append(plan.Engines, PlanEngine{Name: e.Name, Iface: e.Iface, CPU: e.CPU, Root: p.nodes[e.Link]})
		for _, n := range m.reachable(e.Link) {
			b := m.brick(n)
			node := Node{ID: p.nodes[n], Kind: kindNode[b.Kind], Hash: b.Hash, Label: n, Brick: n}
			if b.Kind == Duplicator {
				node.Dup = p.dups[n]
			}
			if b.Kind == Filter {
				f, err := filter.Compile(b.Filter)
				if err != nil {
					return nil, err
				}
				node.Filter = f
			}
			for _, o := range b.Outputs {
				if m.brick(o) != nil {
					node.Children = append(node.Children, p.nodes[o])
					continue
				}
				l := outputLabel(n, o)
				dev := o
				if IsPipe(o) {
					dev = PipeHost(o)
				}
				out := Node{ID: p.nodes[l], Kind: NodeOutput, Device: dev, Label: l, Brick: n, Output: o}
				if IsXSK(o) {
					out.Kind, out.Device, out.Dup = NodeXSK, "", p.xsks[o]
					if !slices.ContainsFunc(plan.XSKs, func(x PlanXSK) bool { return x.Name == o }) {
						plan.XSKs = append(plan.XSKs, PlanXSK{Name: o, Iface: e.Iface, Slot: p.xsks[o]})
					}
				}
				nodes[out.ID] = out
				node.Children = append(node.Children, out.ID)
			}
			nodes[node.ID] = node
		}
	}
	for _, n := range nodes {
		plan.Nodes = append(plan.Nodes, n)
	}
	slices.SortFunc(plan.Nodes, func(a, b Node) int { return int(a.ID) - int(b.ID) })
	sort.Slice(plan.Engines, func(i, j int) bool { return plan.Engines[i].Name < plan.Engines[j].Name })
	return plan, nil
}

// Labels maps every node id the planner holds to its label (for stats).
func (p *Planner) Labels() map[uint32]string {
	out := map[uint32]string{}
	for l, id := range p.nodes {
		out[id] = l
	}
	return out
}

func errTooMany(what string, max int) error {
	return fmt.Errorf("too many %s (at most %d)", what, max)
}

// Clone copies the planner, so a plan that is not applied leaves the
// original's ids as they were.
func (p *Planner) Clone() Planner {
	c := Planner{nodes: map[string]uint32{}, dups: map[string]uint32{}, xsks: map[string]uint32{}}
	for k, v := range p.xsks {
		c.xsks[k] = v
	}
	for k, v := range p.nodes {
		c.nodes[k] = v
	}
	for k, v := range p.dups {
		c.dups[k] = v
	}
	return c
}

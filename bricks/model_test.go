package bricks

import (
	"slices"
	"strings"
	"testing"
)

var testEnv = Env{
	LinkExists: func(n string) bool { return slices.Contains([]string{"eth3", "eth4", "eth5", "tool0"}, n) },
	NumCPU:     2,
}

func cpu(n int) *int { return &n }

// base is a model with a running engine, for the verbs to act on.
func base(t *testing.T) *Model {
	m := &Model{}
	for _, op := range []Op{
		{Verb: "engine-add", Name: "e0", Iface: "eth3"},
		{Verb: "add", Name: "lb0", Kind: "LoadBalancer", Hash: "4tuple"},
		{Verb: "add", Name: "m0", Kind: "merge"},
		{Verb: "add", Name: "m1", Kind: "merge"},
		{Verb: "connect-output", Name: "lb0", Args: []string{"eth3}0", "tool0"}},
		{Verb: "link", Name: "e0", Args: []string{"lb0"}},
		{Verb: "start", Name: "e0"},
	} {
		if err := m.Apply(op); err != nil {
			t.Fatalf("%v: %v", op, err)
		}
	}
	if err := m.Validate(testEnv); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestVerbs(t *testing.T) {
	for _, c := range []struct {
		name string
		ops  []Op
		want string // "" = valid
	}{
		{"unknown type", []Op{{Verb: "add", Name: "x", Kind: "splitter"}}, "unknown brick type"},
		{"name taken", []Op{{Verb: "add", Name: "e0", Kind: "merge"}}, "already in use"},
		{"hash on duplicator", []Op{{Verb: "add", Name: "d", Kind: "duplicator", Hash: "2tuple"}}, "--hash"},
		{"bad hash", []Op{{Verb: "add", Name: "l", Kind: "loadbalancer", Hash: "5tuple"}}, "hash"},
		{"bad filter", []Op{{Verb: "add", Name: "f", Kind: "filter", Filter: "tcp port"}}, "filter"},
		{"filter ok", []Op{{Verb: "add", Name: "f", Kind: "filter", Filter: "tcp port 80"}}, ""},
		{"cycle", []Op{{Verb: "connect-output", Name: "m0", Args: []string{"m1"}}, {Verb: "connect-output", Name: "m1", Args: []string{"m0"}}}, "cycle"},
		{"self", []Op{{Verb: "connect-output", Name: "m0", Args: []string{"m0"}}}, "itself"},
		{"missing output", []Op{{Verb: "connect-output", Name: "m0", Args: []string{"nosuch0"}}}, "neither a brick nor an interface"},
		{"pipe name too long", []Op{{Verb: "connect-output", Name: "m0", Args: []string{"averylongname1}0"}}}, "15 characters"},
		{"merge two outputs", []Op{{Verb: "connect-output", Name: "m0", Args: []string{"tool0", "eth4"}}}, "one output"},
		{"duplicator to brick", []Op{{Verb: "add", Name: "d", Kind: "duplicator"}, {Verb: "connect-output", Name: "d", Args: []string{"m0"}}}, "interfaces, not bricks"},
		{"link running", []Op{{Verb: "link", Name: "e0", Args: []string{"m0"}}}, "running"},
		{"unlink running", []Op{{Verb: "unlink", Name: "e0"}}, "running"},
		{"change running", []Op{{Verb: "connect-output", Name: "lb0", Args: []string{"eth4"}}}, "in use by running engine"},
		{"delete running", []Op{{Verb: "engine-del", Name: "e0"}}, "running"},
		{"delete linked", []Op{{Verb: "stop", Name: "e0"}, {Verb: "del", Name: "lb0"}}, "linked"},
		{"start empty", []Op{{Verb: "engine-add", Name: "e1", Iface: "eth4"}, {Verb: "start", Name: "e1"}}, "nothing linked"},
		{"start no outputs", []Op{{Verb: "engine-add", Name: "e1", Iface: "eth4"}, {Verb: "link", Name: "e1", Args: []string{"m0"}}, {Verb: "start", Name: "e1"}}, "no output"},
		{"two engines one iface", []Op{{Verb: "engine-add", Name: "e1", Iface: "eth3"}}, "one engine per interface"},
		{"missing iface", []Op{{Verb: "engine-add", Name: "e1", Iface: "nosuch0"}}, "does not exist"},
		{"bad cpu", []Op{{Verb: "engine-add", Name: "e1", Iface: "eth4", CPU: cpu(7)}}, "cpu 7"},
		{"wrong input", []Op{{Verb: "connect-input", Name: "m0", Args: []string{"eth4"}}, {Verb: "connect-output", Name: "m0", Args: []string{"eth3}1"}},
			{Verb: "engine-add", Name: "e1", Iface: "tool0"}, {Verb: "link", Name: "e1", Args: []string{"m0"}}, {Verb: "start", Name: "e1"}}, "inputs are eth4"},
		{"merge of two engines", []Op{{Verb: "connect-output", Name: "m0", Args: []string{"eth3}1"}},
			{Verb: "engine-add", Name: "e1", Iface: "eth4"}, {Verb: "link", Name: "e1", Args: []string{"m0"}}, {Verb: "start", Name: "e1"},
			{Verb: "engine-add", Name: "e2", Iface: "eth5"}, {Verb: "link", Name: "e2", Args: []string{"m0"}}, {Verb: "start", Name: "e2"}}, ""},
		{"xsk output", []Op{{Verb: "connect-output", Name: "m0", Args: []string{"xsk:go0"}}}, ""},
		{"duplicator to xsk", []Op{{Verb: "add", Name: "d", Kind: "duplicator"}, {Verb: "connect-output", Name: "d", Args: []string{"xsk:go0"}}}, "AF_XDP"},
		{"xsk from two engines", []Op{{Verb: "connect-output", Name: "m0", Args: []string{"xsk:go0"}},
			{Verb: "engine-add", Name: "e1", Iface: "eth4"}, {Verb: "link", Name: "e1", Args: []string{"m0"}}, {Verb: "start", Name: "e1"},
			{Verb: "engine-add", Name: "e2", Iface: "eth5"}, {Verb: "link", Name: "e2", Args: []string{"m0"}}, {Verb: "start", Name: "e2"}}, "one interface"},
		{"stop then relink", []Op{{Verb: "stop", Name: "e0"}, {Verb: "connect-output", Name: "m0", Args: []string{"eth4"}}, {Verb: "link", Name: "e0", Args: []string{"m0"}}, {Verb: "start", Name: "e0"}}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := base(t)
			var err error
			for _, op := range c.ops {
				if err = m.Apply(op); err != nil {
					break
				}
			}
			if err == nil {
				err = m.Validate(testEnv)
			}
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want an error about %q", err, c.want)
			}
			if c.want != "" && strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestPlanStableIDs(t *testing.T) {
	m := base(t)
	var p Planner
	a, err := p.Plan(m)
	if err != nil {
		t.Fatal(err)
	}
	// Another engine and brick appear: lb0's tree keeps its ids.
	for _, op := range []Op{
		{Verb: "add", Name: "aaa", Kind: "duplicator"},
		{Verb: "connect-output", Name: "aaa", Args: []string{"eth4"}},
		{Verb: "engine-add", Name: "e1", Iface: "tool0"},
		{Verb: "link", Name: "e1", Args: []string{"aaa"}},
		{Verb: "start", Name: "e1"},
	} {
		if err := m.Apply(op); err != nil {
			t.Fatal(err)
		}
	}
	b, err := p.Plan(m)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(pl *Plan) map[string]uint32 {
		out := map[string]uint32{}
		for _, n := range pl.Nodes {
			out[n.Label] = n.ID
		}
		return out
	}
	ia, ib := ids(a), ids(b)
	for l, id := range ia {
		if ib[l] != id {
			t.Errorf("%s moved from node %d to %d", l, id, ib[l])
		}
	}
	if len(ib) != len(ia)+2 {
		t.Errorf("plan has %d nodes, want %d", len(ib), len(ia)+2)
	}
}

func TestOneLiner(t *testing.T) {
	ops, err := OneLiner(LoadBalancer, "eth3", 4, "4tuple")
	if err != nil {
		t.Fatal(err)
	}
	m := &Model{}
	for _, op := range ops {
		if err := m.Apply(op); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Validate(testEnv); err != nil {
		t.Fatal(err)
	}
	if got := m.Pipes(); !slices.Equal(got, []string{"eth3}0", "eth3}1", "eth3}2", "eth3}3"}) {
		t.Errorf("pipes %v", got)
	}
	if _, err := OneLiner(Duplicator, "eth3", 0, ""); err == nil {
		t.Error("0 outputs accepted")
	}
}

package xdp

import (
	"slices"
	"sort"
	"testing"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/lab"
)

// TestBrickVectors replays testdata/bricks through the XDP datapath with
// BPF_PROG_TEST_RUN: the verdict, and which outputs' counters count the
// packet (a redirect is not carried out by a test run).
func TestBrickVectors(t *testing.T) {
	requireRoot(t)
	files, err := bricks.LoadVectors()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		t.Run(f.Name, func(t *testing.T) {
			w, err := lab.NewWorker()
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			var b *Backend
			idx, err := w.VethPairs(f.Ifaces)
			if err != nil {
				t.Fatal(err)
			}
			var plan *bricks.Plan
			err = w.Do(func() error {
				if b, err = Load(backend.Options{ConnMax: 1024, HashSeed: f.Seed}); err != nil {
					return err
				}
				if err := f.Config.Validate(bricks.Env{}); err != nil {
					return err
				}
				var pl bricks.Planner
				if plan, err = pl.Plan(&f.Config); err != nil {
					return err
				}
				return b.ApplyBricks(plan)
			})
			if b != nil {
				defer b.Close()
			}
			if err != nil {
				t.Fatal(err)
			}
			device := map[uint32]string{}
			for _, n := range plan.Nodes {
				if n.Kind == bricks.NodeOutput {
					device[n.ID] = n.Device
				}
			}
			got := map[string][]string{}
			for _, p := range f.Packets {
				frame, err := p.Frame()
				if err != nil {
					t.Fatal(err)
				}
				before, err := b.BrickStats()
				if err != nil {
					t.Fatal(err)
				}
				var verdict string
				if err := w.Do(func() error {
					verdict, _, err = TestRun(b.Program(), idx[p.Iface], frame)
					return err
				}); err != nil {
					t.Fatal(err)
				}
				after, err := b.BrickStats()
				if err != nil {
					t.Fatal(err)
				}
				var outs []string
				for id, dev := range device {
					switch after[id].Pkts - before[id].Pkts {
					case 0:
					case 1:
						outs = append(outs, dev)
					default:
						t.Errorf("%s: output %s counted %d packets", p.Name, dev, after[id].Pkts-before[id].Pkts)
					}
				}
				sort.Strings(outs)
				got[p.Name] = outs
				if verdict != p.Verdict || !slices.Equal(outs, p.Outputs) {
					t.Errorf("%s: got %s %v, want %s %v", p.Name, verdict, outs, p.Verdict, p.Outputs)
				}
				if p.SameAs != "" && !slices.Equal(outs, got[p.SameAs]) {
					t.Errorf("%s: output %v, but %s's is %v", p.Name, outs, p.SameAs, got[p.SameAs])
				}
			}
		})
	}
}

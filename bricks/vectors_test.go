package bricks

import (
	"slices"
	"testing"
)

// TestVectorsGo replays the brick vectors through the Go datapath (Walk):
// the expected outputs in testdata are what every backend must produce.
func TestVectorsGo(t *testing.T) {
	files, err := LoadVectors()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		t.Run(f.Name, func(t *testing.T) {
			if err := f.Config.Validate(Env{}); err != nil {
				t.Fatal(err)
			}
			var pl Planner
			plan, err := pl.Plan(&f.Config)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string][]string{}
			for _, p := range f.Packets {
				frame, err := p.Frame()
				if err != nil {
					t.Fatal(err)
				}
				v, outs := plan.Walk(p.Iface, frame, f.Seed)
				got[p.Name] = outs
				if v != p.Verdict || !slices.Equal(outs, p.Outputs) {
					t.Errorf("%s: got %s %v, want %s %v", p.Name, v, outs, p.Verdict, p.Outputs)
				}
				if p.SameAs != "" && !slices.Equal(outs, got[p.SameAs]) {
					t.Errorf("%s: output %v, but %s's is %v", p.Name, outs, p.SameAs, got[p.SameAs])
				}
			}
		})
	}
}

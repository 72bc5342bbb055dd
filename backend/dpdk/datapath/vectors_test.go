package datapath

import (
	"slices"
	"testing"
	"time"

	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/lb"
)

// runs names the vector files this datapath must pass; the others are
// skipped with the reason Apply gives (modes not built here yet).
var runs = []string{"fnat-tcp", "fnat-udp", "passthrough", "malformed", "dr", "nat", "tunnel", "fragments", "snat", "icmp", "pmtu", "fnat6", "dr6", "tunnel6", "nat64", "malformed6", "fragments6", "icmp6"}

type vectorDatapath struct {
	d     *Datapath
	ports map[string]int
}

func (v *vectorDatapath) Run(iface string, frame []byte) (string, []byte, error) {
	// Room before the frame, as an mbuf has, for the tunnel's outer header.
	buf := make([]byte, 64+len(frame))
	copy(buf[64:], frame)
	v.d.Tick(time.Now())
	verdict, _, off, n := v.d.ProcessAt(v.ports[iface], buf, 64, len(frame))
	return verdict.String(), buf[off : off+n], nil
}

func (v *vectorDatapath) Counters() (map[string]uint64, error) { return v.d.Counters(), nil }

// The same vector files the XDP program replays (testdata/vectors), through
// the Go datapath: the same verdicts, output bytes and counters.
func TestVectors(t *testing.T) {
	ran := map[string]bool{}
	vectors.Replay(t, func(t *testing.T, f *vectors.File, cfg *lb.Config) vectors.Datapath {
		if why, ok := NotYet[f.Name]; ok {
			t.Skip(why)
		}
		if f.Inline != nil {
			t.Skip("inline: the DPDK worker puts ports inline, not the datapath (backend/dpdk's TestVectorsOnRings replays it)")
		}
		d, ports, err := FromVectorFile(f, Options{})
		if err != nil {
			t.Skip(err)
		}
		v := &vectorDatapath{ports: ports}
		if err := d.Apply(cfg); err != nil {
			if slices.Contains(runs, f.Name) {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		ran[f.Name] = true
		v.d = d
		return v
	})
	for _, n := range runs {
		if !ran[n] {
			t.Errorf("vector file %s did not run", n)
		}
	}
}

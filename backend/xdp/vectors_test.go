package xdp

import (
	"os"
	"testing"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/cli/ipvsadm"
	"github.com/mbx-net/mbx/lab"
	"github.com/mbx-net/mbx/lb"
)

func requireRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF, network namespaces)")
	}
}

type testDatapath struct {
	w   *lab.Worker
	b   *Backend
	idx map[string]int
	cfg *lb.Config
}

func ipvsadmLines(s string) ([]lb.Op, error) { return ipvsadm.ParseLines(s) }

var lbLookup = lb.LookupScheduler

func (d *testDatapath) Run(iface string, frame []byte) (verdict string, out []byte, err error) {
	err = d.w.Do(func() error {
		verdict, out, err = TestRun(d.b.Program(), d.idx[iface], frame)
		return err
	})
	return
}

func (d *testDatapath) Counters() (map[string]uint64, error) {
	s, err := d.b.Snapshot()
	if err != nil {
		return nil, err
	}
	return s.Datapath, nil
}

// setupXDP loads the datapath (not attached) in a private namespace holding
// the vector's interfaces.
func setupXDP(t *testing.T, f *vectors.File, cfg *lb.Config) vectors.Datapath {
	requireRoot(t)
	w, err := lab.NewWorker()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	d := &testDatapath{w: w, cfg: cfg}
	err = w.Do(func() error {
		if d.idx, err = BuildTopology(f); err != nil {
			return err
		}
		if d.b, err = Load(backend.Options{ConnMax: 4096}); err != nil {
			return err
		}
		for _, i := range d.idx {
			if err := d.b.AddTxPort(i); err != nil {
				return err
			}
		}
		return d.b.Apply(cfg)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.b.Close() })
	return d
}

func TestVectors(t *testing.T) { vectors.Replay(t, setupXDP) }

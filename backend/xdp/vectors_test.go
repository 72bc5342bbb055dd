package xdp

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/bricks/xsk"
	"github.com/mbx-net/mbx/cli/ipvsadm"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/lab"
	"github.com/mbx-net/mbx/lb"
	"github.com/mbx-net/mbx/monitor"
)

func requireRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF, network namespaces)")
	}
}

type testDatapath struct {
	w    *lab.Worker
	b    *Backend
	idx  map[string]int
	cfg  *lb.Config
	prog *ebpf.Program // the datapath with a stream filter (inline vectors)
}

func ipvsadmLines(s string) ([]lb.Op, error) { return ipvsadm.ParseLines(s) }

var lbLookup = lb.LookupScheduler

func (d *testDatapath) Run(iface string, frame []byte) (verdict string, out []byte, err error) {
	err = d.w.Do(func() error {
		prog := d.b.Program()
		if d.prog != nil {
			prog = d.prog
		}
		verdict, out, err = TestRun(prog, d.idx[iface], frame)
		return err
	})
	return
}

func (d *testDatapath) Counters() (map[string]uint64, error) {
	s, err := d.b.Snapshot()
	if err != nil {
		return nil, err
	}
	ms, err := d.b.monitorStats()
	if err != nil {
		return nil, err
	}
	out := maps.Clone(s.Datapath)
	out["inline_to_go"], out["inline_forwarded"] = ms.ToGo, ms.Forwarded
	out["inline_dropped"], out["inline_no_socket"] = ms.Dropped, ms.NoSocket
	return out, nil
}

// Flow writes a handler's decision as Inline does.
func (d *testDatapath) Flow(client, server netip.AddrPort, action string) error {
	a := map[string]monitor.FlowAction{"drop": monitor.FlowDrop, "bypass": monitor.FlowBypass}[action]
	if a == 0 {
		return fmt.Errorf("unknown flow action %q", action)
	}
	(&Inline{b: d.b}).flowAction(&monitor.Conn{Client: client, Server: server, IPv6: client.Addr().Is6()}, a)
	return nil
}

// setupInline puts the vector's pairs inline, as StartInline does without
// attaching: the filtering datapath becomes the program under test.
func (d *testDatapath) setupInline(t *testing.T, in *vectors.Inline) error {
	if in.Filter != "" {
		f, err := filter.Compile(in.Filter)
		if err != nil {
			return err
		}
		body, err := f.XDPFunction()
		if err != nil {
			return err
		}
		if d.prog, err = programVariant("mbx_xdp", map[string]asm.Instructions{MonitorFilterFunc: body}, d.b.mapByName); err != nil {
			return err
		}
		t.Cleanup(func() { d.prog.Close() })
	}
	for _, p := range in.Pairs {
		for i, name := range p {
			ifx, peer := d.idx[name], d.idx[p[1-i]]
			v := mbxMonIface{Ifindex: uint32(ifx), Flags: monOn | monInline, Peer: uint32(peer)}
			if err := d.b.objs.MonIfaces.Put(uint32(ifx%ifSlots), &v); err != nil {
				return err
			}
			if !in.Sockets {
				continue
			}
			s, err := xsk.Open(ifx, 0)
			if err != nil {
				return err
			}
			t.Cleanup(func() { s.Close() })
			if err := d.b.objs.InlXsks.Put(uint32((ifx&0xff)*inlQueues), uint32(s.FD())); err != nil {
				return err
			}
		}
	}
	return nil
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
		if f.Inline != nil {
			if err := d.setupInline(t, f.Inline); err != nil {
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

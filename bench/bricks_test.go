package bench

import (
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/xdp"
	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/lab"
)

// BenchmarkBricks times mbx's program per packet (kernel-measured) on an
// engine's interface whose tree is one 4-tuple LoadBalancer over four
// outputs (testdata/bricks/loadbalancer.yaml), against a plain program that
// only redirects through a devmap: the BPF share of fwdbench's bricks-lb /
// xdp-redirect ratio, without the redirect's transmit work.
func BenchmarkBricks(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	files, err := bricks.LoadVectors()
	if err != nil {
		b.Fatal(err)
	}
	var f *bricks.VectorFile
	for _, v := range files {
		if v.Name == "loadbalancer" {
			f = v
		}
	}
	if f == nil {
		b.Fatal("no loadbalancer vector file")
	}
	w, err := lab.NewWorker()
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	var be *xdp.Backend
	idx, err := w.VethPairs(f.Ifaces)
	if err != nil {
		b.Fatal(err)
	}
	var redirect *ebpf.Program
	err = w.Do(func() error {
		if be, err = xdp.Load(backend.Options{ConnMax: 1024, HashSeed: f.Seed}); err != nil {
			return err
		}
		var pl bricks.Planner
		plan, err := pl.Plan(&f.Config)
		if err != nil {
			return err
		}
		if err := be.ApplyBricks(plan); err != nil {
			return err
		}
		devmap, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.DevMapHash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
		if err != nil {
			return err
		}
		defer devmap.Close()
		out := uint32(idx["o0"])
		if err := devmap.Put(out, out); err != nil {
			return err
		}
		redirect, err = ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
			Instructions: asm.Instructions{
				asm.LoadMapPtr(asm.R1, devmap.FD()),
				asm.Mov.Imm(asm.R2, int32(out)),
				asm.Mov.Imm(asm.R3, 0),
				asm.FnRedirectMap.Call(),
				asm.Return(),
			}})
		return err
	})
	if be != nil {
		defer be.Close()
	}
	if redirect != nil {
		defer redirect.Close()
	}
	if err != nil {
		b.Fatal(err)
	}
	frame, err := f.Packets[0].Frame()
	if err != nil {
		b.Fatal(err)
	}
	const xdpRedirect = 4
	for _, c := range []struct {
		name string
		prog *ebpf.Program
	}{{"xdp-redirect", redirect}, {"bricks-lb", be.Program()}} {
		b.Run(c.name, func(b *testing.B) {
			err := w.Do(func() error {
				ret, per, err := RunXDP(c.prog, idx["in0"], frame, b.N, 0)
				if err == nil && ret != xdpRedirect {
					err = fmt.Errorf("verdict %d, want XDP_REDIRECT", ret)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

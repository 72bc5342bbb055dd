package bench

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/backend/xdp"
	"github.com/mbx-net/mbx/lab"
)

var benchConfig = `
-A -t 198.18.0.100:80 -s rr
-a -t 198.18.0.100:80 -r 198.18.1.2 -b
-a -t 198.18.0.100:80 -r 198.18.1.3 -b
--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0
-A -t 198.18.0.100:81 -s mh
-a -t 198.18.0.100:81 -r 198.18.1.2 -b
-a -t 198.18.0.100:81 -r 198.18.1.3 -b
--add-laddr -z 198.18.1.200 -t 198.18.0.100:81 -F lan0
` + laddrs("81") + `
-A -t 198.18.0.100:82 -s wlc
-a -t 198.18.0.100:82 -r 198.18.1.2 -b
-a -t 198.18.0.100:82 -r 198.18.1.3 -b
--add-laddr -z 198.18.1.200 -t 198.18.0.100:82 -F lan0
` + laddrs("82") + laddrs("80")

// laddrs gives a service 7 more LIPs: one client's new connections would
// otherwise exhaust one LIP's ports toward a real server.
func laddrs(port string) string {
	var b strings.Builder
	for i := 201; i <= 207; i++ {
		fmt.Fprintf(&b, "--add-laddr -z 198.18.1.%d -t 198.18.0.100:%s -F lan0\n", i, port)
	}
	return b.String()
}

// BenchmarkXDP times the XDP program per packet (ns/pkt, kernel-measured,
// restore harness included) on the paths that matter. The "harness" case is
// the harness around a program that only returns XDP_PASS.
func BenchmarkXDP(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	f, err := vectors.Find("fnat-tcp")
	if err != nil {
		b.Fatal(err)
	}
	f.Config = benchConfig
	cfg, err := f.ConfigModel()
	if err != nil {
		b.Fatal(err)
	}
	w, err := lab.NewWorker()
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	var be *xdp.Backend
	var idx map[string]int
	if err := w.Do(func() error {
		if idx, err = xdp.BuildTopology(f); err != nil {
			return err
		}
		if be, err = xdp.Load(backend.Options{ConnMax: 1 << 16}); err != nil {
			return err
		}
		for _, i := range idx {
			if err := be.AddTxPort(i); err != nil {
				return err
			}
		}
		return be.Apply(cfg)
	}); err != nil {
		b.Fatal(err)
	}
	defer be.Close()

	pkt := func(iface string, eth map[string]any, ip map[string]any, tcp map[string]any) []byte {
		fr, err := f.Build(vectors.Packet{Iface: iface, Eth: eth, IP: ip, TCP: tcp, Payload: "0123456789"})
		if err != nil {
			b.Fatal(err)
		}
		return fr
	}
	fromClient := map[string]any{"src": "client", "dst": "wan0"}
	toVIP := map[string]any{"src": "198.18.0.2", "dst": "198.18.0.100"}
	// Establish one connection; learn its local port from the SYN's output.
	var lport uint16
	if err := w.Do(func() error {
		_, out, err := xdp.TestRun(be.Program(), idx["wan0"], pkt("wan0", fromClient, toVIP, map[string]any{"sport": 40000, "dport": 80, "flags": "S"}))
		if err != nil {
			return err
		}
		lport = uint16(out[34])<<8 | uint16(out[35])
		return nil
	}); err != nil {
		b.Fatal(err)
	}

	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer pass.Close()

	synTo := func(port int) []byte {
		return pkt("wan0", fromClient, toVIP, map[string]any{"sport": 1, "dport": port, "flags": "S"})
	}
	cases := []struct {
		name     string
		prog     *ebpf.Program
		iface    string
		frame    []byte
		want     uint32
		newFlows bool
	}{
		{"harness", pass, "wan0", pkt("wan0", fromClient, toVIP, map[string]any{"sport": 40000, "dport": 80, "flags": "A"}), 2, false},
		{"established", be.Program(), "wan0", pkt("wan0", fromClient, toVIP, map[string]any{"sport": 40000, "dport": 80, "flags": "A"}), 4, false},
		{"reply", be.Program(), "lan0", pkt("lan0", map[string]any{"src": "rs1", "dst": "lan0"},
			map[string]any{"src": "198.18.1.2", "dst": "198.18.1.200"}, map[string]any{"sport": 80, "dport": int(lport), "flags": "A"}), 4, false},
		{"not-ours", be.Program(), "wan0", pkt("wan0", fromClient, map[string]any{"src": "198.18.0.2", "dst": "198.18.1.9"},
			map[string]any{"sport": 40000, "dport": 22, "flags": "A"}), 2, false},
		// A new connection per run (two connection-table inserts each):
		// the scheduler's own cost is the difference between these.
		{"syn-new-rr", be.Program(), "wan0", synTo(80), 4, true},
		{"syn-new-mh", be.Program(), "wan0", synTo(81), 4, true},
		{"syn-new-wlc", be.Program(), "wan0", synTo(82), 4, true},
	}
	// The bare trivial program, no harness: the test-run loop's own cost.
	b.Run("bare-pass", func(b *testing.B) {
		frame := cases[0].frame
		err := w.Do(func() error {
			ret, per, err := RunXDP(pass, idx["wan0"], frame, b.N, 0)
			if err == nil && ret != 2 {
				err = fmt.Errorf("verdict %d", ret)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	})
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			newHarness := NewHarness
			if c.newFlows {
				newHarness = func(p *ebpf.Program, f []byte) (*Harness, error) { return NewHarnessNewFlows(p, f, 26) }
			}
			h, err := newHarness(c.prog, c.frame)
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			b.ResetTimer()
			err = w.Do(func() error {
				ret, per, err := h.Run(idx[c.iface], b.N)
				if err != nil {
					return err
				}
				if ret != c.want {
					snap, _ := be.Snapshot()
					return fmt.Errorf("verdict %d, want %d (counters %v)", ret, c.want, snap.Datapath)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

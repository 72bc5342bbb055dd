package bench

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

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
` + laddrs("82") + laddrs("80") + pickOnly

// pickOnly are services with real servers but no local address: a SYN to
// one runs the whole new-connection path up to and including the scheduler,
// then is dropped (drop_no_laddr) before any table insert. Their difference
// is the schedulers' own cost, free of the inserts' noise.
var pickOnly = `
-A -t 198.18.0.100:90 -s rr
-a -t 198.18.0.100:90 -r 198.18.1.2 -b
-a -t 198.18.0.100:90 -r 198.18.1.3 -b
-A -t 198.18.0.100:91 -s mh
-a -t 198.18.0.100:91 -r 198.18.1.2 -b
-a -t 198.18.0.100:91 -r 198.18.1.3 -b
-A -t 198.18.0.100:92 -s wlc
-a -t 198.18.0.100:92 -r 198.18.1.2 -b
-a -t 198.18.0.100:92 -r 198.18.1.3 -b
`

// laddrs gives a service 7 more LIPs: one client's new connections would
// otherwise exhaust one LIP's ports toward a real server.
func laddrs(port string) string {
	var b strings.Builder
	for i := 201; i <= 207; i++ {
		fmt.Fprintf(&b, "--add-laddr -z 198.18.1.%d -t 198.18.0.100:%s -F lan0\n", i, port)
	}
	return b.String()
}

// fnatBench is the datapath loaded (not attached) in a private namespace
// holding the fnat-tcp vector's interfaces, with benchConfig applied and one
// Full-NAT connection established from 198.18.0.2:40000.
type fnatBench struct {
	w     *lab.Worker
	be    *xdp.Backend
	idx   map[string]int
	lport uint16 // the connection's local port
	pkt   func(iface string, eth, ip, tcp map[string]any) []byte
	file  *vectors.File
}

var (
	fromClient = map[string]any{"src": "client", "dst": "wan0"}
	toVIP      = map[string]any{"src": "198.18.0.2", "dst": "198.18.0.100"}
)

func newFNATBench(b *testing.B) *fnatBench {
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
	// MBX_BENCH_MAGLEV_SIZE: the mh services' table size (a size sweep).
	if s := os.Getenv("MBX_BENCH_MAGLEV_SIZE"); s != "" {
		if _, err := fmt.Sscan(s, &cfg.Maglev.Size); err != nil {
			b.Fatal(err)
		}
	}
	fb := &fnatBench{file: f}
	if fb.w, err = lab.NewWorker(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(fb.w.Close)
	if err := fb.w.Do(func() error {
		if fb.idx, err = xdp.BuildTopology(f); err != nil {
			return err
		}
		if fb.be, err = xdp.Load(backend.Options{ConnMax: 1 << 16}); err != nil {
			return err
		}
		for _, i := range fb.idx {
			if err := fb.be.AddTxPort(i); err != nil {
				return err
			}
		}
		return fb.be.Apply(cfg)
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fb.be.Close() })
	fb.pkt = func(iface string, eth, ip, tcp map[string]any) []byte {
		fr, err := f.Build(vectors.Packet{Iface: iface, Eth: eth, IP: ip, TCP: tcp, Payload: "0123456789"})
		if err != nil {
			b.Fatal(err)
		}
		return fr
	}
	// Establish one connection; learn its local port from the SYN's output.
	if err := fb.w.Do(func() error {
		_, out, err := xdp.TestRun(fb.be.Program(), fb.idx["wan0"], fb.pkt("wan0", fromClient, toVIP, map[string]any{"sport": 40000, "dport": 80, "flags": "S"}))
		if err != nil {
			return err
		}
		fb.lport = uint16(out[34])<<8 | uint16(out[35])
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	return fb
}

// pureACK is a payload-free ACK of the established connection (the same
// packet over and over is then no retransmission for a tracker).
func (fb *fnatBench) pureACK(b *testing.B) []byte {
	fr, err := fb.file.Build(vectors.Packet{Iface: "wan0", Eth: fromClient, IP: toVIP, TCP: map[string]any{"sport": 40000, "dport": 80, "flags": "A"}})
	if err != nil {
		b.Fatal(err)
	}
	return fr
}

// BenchmarkXDP times the XDP program per packet (ns/pkt, kernel-measured,
// restore harness included) on the paths that matter. The "harness" case is
// the harness around a program that only returns XDP_PASS.
func BenchmarkXDP(b *testing.B) {
	fb := newFNATBench(b)
	w, be, idx, pkt, lport := fb.w, fb.be, fb.idx, fb.pkt, fb.lport
	var err error

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
		name  string
		prog  *ebpf.Program
		iface string
		frame []byte
		want  uint32
	}{
		{"harness", pass, "wan0", pkt("wan0", fromClient, toVIP, map[string]any{"sport": 40000, "dport": 80, "flags": "A"}), 2},
		{"established", be.Program(), "wan0", pkt("wan0", fromClient, toVIP, map[string]any{"sport": 40000, "dport": 80, "flags": "A"}), 4},
		{"reply", be.Program(), "lan0", pkt("lan0", map[string]any{"src": "rs1", "dst": "lan0"},
			map[string]any{"src": "198.18.1.2", "dst": "198.18.1.200"}, map[string]any{"sport": 80, "dport": int(lport), "flags": "A"}), 4},
		{"not-ours", be.Program(), "wan0", pkt("wan0", fromClient, map[string]any{"src": "198.18.0.2", "dst": "198.18.1.9"},
			map[string]any{"sport": 40000, "dport": 22, "flags": "A"}), 2},
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
			h, err := NewHarness(c.prog, c.frame)
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
	// A new connection per run (new client address each time), schedulers
	// interleaved: the whole new-connection path, and the pick alone.
	b.Run("syn-new", func(b *testing.B) {
		benchInterleaved(b, w, be, idx["wan0"], 4, true, map[string][]byte{"rr": synTo(80), "mh": synTo(81), "wlc": synTo(82)})
	})
	b.Run("syn-pick", func(b *testing.B) {
		benchInterleaved(b, w, be, idx["wan0"], 1, false, map[string][]byte{"rr": synTo(90), "mh": synTo(91), "wlc": synTo(92)})
	})
}

// newConnChunk is how many new connections one chunk makes: two entries
// each stay well under the 65536-entry table, so no chunk pays LRU
// eviction and every chunk starts from the same (empty) table.
const newConnChunk = 8192

// benchInterleaved times SYNs of new flows per scheduler in one run: chunks
// of the schedulers alternate, in reversed order every other round, so
// machine noise hits them alike. With flush the connection table is emptied
// before each chunk, so every chunk's inserts meet the same (empty) table.
func benchInterleaved(b *testing.B, w *lab.Worker, be *xdp.Backend, ifindex int, want uint32, flush bool, syns map[string][]byte) {
	names := make([]string, 0, len(syns))
	for n := range syns {
		names = append(names, n)
	}
	sort.Strings(names)
	harness := map[string]*Harness{}
	for _, n := range names {
		h, err := NewHarnessNewFlows(be.Program(), syns[n], 26)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		harness[n] = h
	}
	total := map[string]time.Duration{}
	runs := 0
	for round := 0; runs < b.N; round++ {
		order := append([]string(nil), names...)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, n := range order {
			if flush {
				if _, err := be.FlushConns(); err != nil {
					b.Fatal(err)
				}
			}
			err := w.Do(func() error {
				ret, per, err := harness[n].Run(ifindex, newConnChunk)
				if err == nil && ret != want {
					snap, _ := be.Snapshot()
					err = fmt.Errorf("%s: verdict %d, want %d (counters %v)", n, ret, want, snap.Datapath)
				}
				total[n] += per
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		runs += newConnChunk
	}
	rounds := float64(runs / newConnChunk)
	for _, n := range names {
		b.ReportMetric(float64(total[n].Nanoseconds())/rounds, n+"-ns/pkt")
	}
	if _, ok := total["rr"]; ok {
		b.ReportMetric(float64((total["mh"]-total["rr"]).Nanoseconds())/rounds, "mh-minus-rr-ns")
	}
}

package bench

import (
	"fmt"
	"os"
	"testing"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/backend/xdp"
	"github.com/mbx-net/mbx/lab"
)

// bench6Config: the fnat6 vector file's topology with an IPv6 Full-NAT
// service (port 80), a DR one (81), and an IPv4 Full-NAT service in the
// same program for the ratio (v4 addresses added to the topology below).
const bench6Config = `
-A -t [fd00:198::a:100]:80 -s rr
-a -t [fd00:198::a:100]:80 -r [fd00:198::b:2] -b
--add-laddr -z fd00:198::b:200 -t [fd00:198::a:100]:80 -F lan0
-A -t [fd00:198::a:100]:81 -s rr
-a -t [fd00:198::a:100]:81 -r [fd00:198::b:2] -g
-A -t 198.18.0.100:80 -s rr
-a -t 198.18.0.100:80 -r 198.18.1.2 -b
--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0
`

// BenchmarkXDP6 times established IPv6 flows through mbx_xdp and its tail
// call to mbx_lb6 (Full-NAT both ways, DR), beside an IPv4 Full-NAT flow
// of the same program in the same run. NAT64 and the ip6ip6 tunnel move
// the packet's head, which the restore harness cannot undo between
// repeats: bench/fwdbench measures them.
func BenchmarkXDP6(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	f, err := vectors.Find("fnat6")
	if err != nil {
		b.Fatal(err)
	}
	f.Config = bench6Config
	f.Ifaces[0].Addrs = append(f.Ifaces[0].Addrs, "198.18.0.1/24", "198.18.0.100/32")
	f.Ifaces[0].Neighbors = append(f.Ifaces[0].Neighbors, vectors.Neighbor{Name: "client4", IP: "198.18.0.2", MAC: "02:00:00:00:01:02"})
	f.Ifaces[1].Addrs = append(f.Ifaces[1].Addrs, "198.18.1.1/24", "198.18.1.200/32")
	f.Ifaces[1].Neighbors = append(f.Ifaces[1].Neighbors, vectors.Neighbor{Name: "rs1v4", IP: "198.18.1.2", MAC: "02:00:00:00:02:02"})
	cfg, err := f.ConfigModel()
	if err != nil {
		b.Fatal(err)
	}
	w, err := lab.NewWorker()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Close)
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
	b.Cleanup(func() { be.Close() })
	pkt := func(iface string, eth, ip, tcp map[string]any) []byte {
		fr, err := f.Build(vectors.Packet{Iface: iface, Eth: eth, IP: ip, TCP: tcp})
		if err != nil {
			b.Fatal(err)
		}
		return fr
	}
	client := map[string]any{"src": "client", "dst": "wan0"}
	to6 := map[string]any{"src": "fd00:198::a:2", "dst": "fd00:198::a:100"}
	to4 := map[string]any{"src": "198.18.0.2", "dst": "198.18.0.100"}
	// Establish the flows; learn the IPv6 Full-NAT local port.
	var lport int
	if err := w.Do(func() error {
		for _, syn := range [][]byte{
			pkt("wan0", client, to6, map[string]any{"sport": 40000, "dport": 80, "flags": "S"}),
			pkt("wan0", client, to6, map[string]any{"sport": 40000, "dport": 81, "flags": "S"}),
			pkt("wan0", client, to4, map[string]any{"sport": 40000, "dport": 80, "flags": "S"}),
		} {
			v, out, err := xdp.TestRun(be.Program(), idx["wan0"], syn)
			if err != nil || v != "redirect" {
				return fmt.Errorf("SYN: %s %v", v, err)
			}
			if lport == 0 {
				lport = int(out[54])<<8 | int(out[55])
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	ack := map[string]any{"sport": 40000, "dport": 80, "flags": "A"}
	cases := []struct{ name, iface string }{{"fnat4-established", "wan0"}, {"fnat6-established", "wan0"}, {"fnat6-reply", "lan0"}, {"dr6-established", "wan0"}}
	frames := [][]byte{
		pkt("wan0", client, to4, ack),
		pkt("wan0", client, to6, ack),
		pkt("lan0", map[string]any{"src": "rs1", "dst": "lan0"}, map[string]any{"src": "fd00:198::b:2", "dst": "fd00:198::b:200"},
			map[string]any{"sport": 80, "dport": lport, "flags": "A"}),
		pkt("wan0", client, to6, map[string]any{"sport": 40000, "dport": 81, "flags": "A"}),
	}
	for i, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			h, err := NewHarness(be.Program(), frames[i])
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			b.ResetTimer()
			if err := w.Do(func() error {
				ret, per, err := h.Run(idx[c.iface], b.N)
				if err != nil {
					return err
				}
				if ret != 4 {
					snap, _ := be.Snapshot()
					return fmt.Errorf("verdict %d, want redirect (counters %v)", ret, snap.Datapath)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

//go:build dpdk

package dpdk

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/mbx-net/mbx/backend/dpdk/datapath"
	"github.com/mbx-net/mbx/backend/dpdk/rte"
	"github.com/mbx-net/mbx/backend/dpdk/rte/rtetest"
	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/lb"
	"github.com/mbx-net/mbx/monitor"
)

// Two net_ring ports (each loops what it sends back to its receive queue)
// stand for a vector file's two interfaces.
func TestMain(m *testing.M) { rtetest.Main(m, "net_ring0", "net_ring1") }

// ringDatapath replays a vector step through real mbufs: the input frame is
// sent on the input interface's ring (it comes back as received), the
// worker polls that port, and the output is read back from the ring of the
// port the datapath chose.
type ringDatapath struct {
	w     *Worker
	dp    *datapath.Datapath
	ports map[string]int
	rings []rte.Port
	mp    *rte.Mempool
	b     *rte.Burst
	pass  []byte
}

func (r *ringDatapath) Run(iface string, frame []byte) (string, []byte, error) {
	in := r.ports[iface]
	if err := r.b.Alloc(r.mp, 1); err != nil {
		return "", nil, err
	}
	if err := r.b.SetLen(0, len(frame)); err != nil {
		return "", nil, err
	}
	copy(r.b.Data(0), frame)
	if r.b.Tx(r.rings[in], 0) != 1 {
		return "", nil, fmt.Errorf("the ring did not take the frame")
	}
	r.pass = nil
	if n := r.w.PollPort(in); n != 1 {
		return "", nil, fmt.Errorf("the worker received %d packets", n)
	}
	if r.pass != nil {
		return "pass", r.pass, nil
	}
	for out, ring := range r.rings {
		if r.b.Rx(ring, 0) == 0 {
			continue
		}
		data := append([]byte(nil), r.b.Data(0)...)
		r.b.Free()
		if out == in {
			return "tx", data, nil
		}
		return "redirect", data, nil
	}
	return "drop", frame, nil
}

func (r *ringDatapath) Counters() (map[string]uint64, error) { return r.dp.Counters(), nil }

// The vector files the Go datapath runs, replayed through DPDK ports and a
// worker: the same verdicts, bytes and counters as XDP's.
func TestVectorsOnRings(t *testing.T) {
	rings, mp := rtetest.Ports(t, 1023, 256, "net_ring0", "net_ring1")
	ran := 0
	vectors.Replay(t, func(t *testing.T, f *vectors.File, cfg *lb.Config) vectors.Datapath {
		if why, ok := datapath.NotYet[f.Name]; ok {
			t.Skip(why)
		}
		if len(f.Ifaces) > len(rings) {
			t.Skip("more interfaces than rings")
		}
		if f.Inline != nil && !f.Inline.Sockets {
			t.Skip("no sockets to close on DPDK: Go is the data plane, it cannot fail to read")
		}
		dp, ports, err := datapath.FromVectorFile(f, datapath.Options{})
		if err != nil {
			t.Skip(err)
		}
		if err := dp.Apply(cfg); err != nil {
			t.Skip(err)
		}
		ran++
		r := &ringDatapath{dp: dp, ports: ports, rings: rings[:len(f.Ifaces)], mp: mp, b: rte.NewBurst(32)}
		r.w = NewWorker(r.rings, 0, dp, 32, mp)
		r.w.Passed = func(_ int, frame []byte) { r.pass = append([]byte(nil), frame...) }
		t.Cleanup(func() { r.w.Close(); r.b.Close() })
		if f.Inline != nil {
			return inlineOnRings(t, r, f.Inline)
		}
		return r
	})
	if ran < 6 {
		t.Errorf("%d vector files ran through the rings, want at least 6", ran)
	}
	if got := mp.Available(); got != 1023 {
		t.Errorf("%d of 1023 buffers back in the pool", got)
	}
}

// A worker's loop with DPDK I/O: bursts of 32 established Full-NAT
// packets are received from one ring, translated, sent to the other ring
// and drained from there; per packet, the datapath plus DPDK's rx/tx
// (the budget: DPVS's 2.9 Mpps per worker, ~340 ns).
func BenchmarkWorkerRing(b *testing.B) {
	rings, mp := rtetest.Ports(b, 4095, 256, "net_ring0", "net_ring1")
	f, err := vectors.Find("fnat-tcp")
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := f.ConfigModel()
	if err != nil {
		b.Fatal(err)
	}
	dp, _, err := datapath.FromVectorFile(f, datapath.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := dp.Apply(cfg); err != nil {
		b.Fatal(err)
	}
	pkt := func(flags string) []byte {
		fr, err := f.Build(vectors.Packet{Iface: "wan0", Eth: map[string]any{"src": "client", "dst": "wan0"},
			IP: map[string]any{"src": "198.18.0.2", "dst": "198.18.0.100"}, TCP: map[string]any{"sport": 40000, "dport": 80, "flags": flags}})
		if err != nil {
			b.Fatal(err)
		}
		return fr
	}
	w := NewWorker(rings, 0, dp, 32, mp)
	defer w.Close()
	in, drain := rte.NewBurst(32), rte.NewBurst(32)
	defer in.Close()
	defer drain.Close()
	send := func(frame []byte, n int) {
		if err := in.Alloc(mp, n); err != nil {
			b.Fatal(err)
		}
		for i := range n {
			in.SetLen(i, len(frame))
			copy(in.Data(i), frame)
		}
		in.Tx(rings[0], 0)
	}
	send(pkt("S"), 1)
	w.PollPort(0)
	drain.Rx(rings[1], 0)
	drain.Free()
	ack := pkt("A")
	pkts := 0
	for b.Loop() {
		b.StopTimer()
		send(ack, 32)
		b.StartTimer()
		pkts += w.PollPort(0)
		drain.Rx(rings[1], 0)
		drain.Free()
	}
	if dp.Counters()["redirect"] < uint64(pkts) {
		b.Fatalf("%d packets, %v", pkts, dp.Counters())
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(pkts), "ns/pkt")
}

// inlineRings is ringDatapath with the stream monitor inline: XDP's
// inline counters from the inline monitor's, handlers' decisions through
// its flow table.
type inlineRings struct {
	*ringDatapath
	im *inlineMonitor
}

func inlineOnRings(t *testing.T, r *ringDatapath, in *vectors.Inline) *inlineRings {
	var f *filter.Filter
	if in.Filter != "" {
		var err error
		if f, err = filter.Compile(in.Filter); err != nil {
			t.Fatal(err)
		}
	}
	im := newInlineMonitor(monitor.New(monitor.Options{}), f)
	peer := make([]int, len(r.rings))
	for i := range peer {
		peer[i] = -1
	}
	for _, p := range in.Pairs {
		a, b := r.ports[p[0]], r.ports[p[1]]
		peer[a], peer[b] = b, a
	}
	r.w.SetInline(peer, im.judge)
	return &inlineRings{r, im}
}

func (r *inlineRings) Counters() (map[string]uint64, error) {
	c, err := r.ringDatapath.Counters()
	st, _ := r.im.Stats()
	c["inline_to_go"], c["inline_forwarded"], c["inline_dropped"] = st.ToGo, st.Forwarded, st.Dropped
	return c, err
}

// Flow applies a handler's decision, as Conn.Drop and StopMonitoring do.
func (r *inlineRings) Flow(client, server netip.AddrPort, action string) error {
	a := map[string]monitor.FlowAction{"drop": monitor.FlowDrop, "bypass": monitor.FlowBypass}[action]
	if a == 0 {
		return fmt.Errorf("unknown flow action %q", action)
	}
	r.im.mu.Lock()
	defer r.im.mu.Unlock()
	r.im.flowAction(&monitor.Conn{Client: client, Server: server}, a)
	return nil
}

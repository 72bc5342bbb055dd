package bench

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/xdp"
	"github.com/mbx-net/mbx/monitor"
)

// tcpFrame builds an Ethernet/IPv4/TCP frame between the lab's addresses.
func tcpFrame(b *testing.B, fromClient bool, flags string, seq, ack uint32, payload int) []byte {
	src, dst := net.IPv4(198, 18, 0, 2), net.IPv4(198, 18, 1, 2)
	sport, dport := layers.TCPPort(40000), layers.TCPPort(80)
	if !fromClient {
		src, dst, sport, dport = dst, src, dport, sport
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src, DstIP: dst}
	tcp := &layers.TCP{SrcPort: sport, DstPort: dport, Seq: seq, Ack: ack, Window: 65535}
	for _, f := range flags {
		switch f {
		case 'S':
			tcp.SYN = true
		case 'A':
			tcp.ACK = true
		case 'F':
			tcp.FIN = true
		}
	}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(make([]byte, payload))); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// trackerBench loads the datapath (not attached) with one established
// connection in the monitor's table; tracking runs on ifindex 1, where
// BPF_PROG_TEST_RUN's packets arrive.
func trackerBench(b *testing.B, m *monitor.Monitor) (*xdp.Backend, *xdp.LiveMonitor) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	be, err := xdp.Load(backend.Options{ConnMax: 1024})
	if err != nil {
		b.Fatal(err)
	}
	lm, err := be.StartTracker(m, xdp.MonitorOptions{Ifindexes: []int{1}})
	if err != nil {
		be.Close()
		b.Fatal(err)
	}
	for _, f := range [][]byte{
		tcpFrame(b, true, "S", 1000, 0, 0),
		tcpFrame(b, false, "SA", 5000, 1001, 0),
		tcpFrame(b, true, "A", 1001, 5001, 0),
	} {
		if _, _, err := RunXDP(be.Program(), 1, f, 1, 0); err != nil {
			b.Fatal(err)
		}
	}
	return be, lm
}

// BenchmarkMonitorTrack: what the BPF tracker adds per packet to mbx's
// program (kernel-measured, same run): a pure ACK (the receiver's state
// machine), and a data segment (sequence tracking; repeated, so the
// retransmission path) against the program with the monitor off.
// Target (issue 5): at most 60 ns of tracking.
func BenchmarkMonitorTrack(b *testing.B) {
	be, lm := trackerBench(b, monitor.New(monitor.Options{}))
	defer be.Close()
	ack := tcpFrame(b, false, "A", 5001, 1001, 0)
	data := tcpFrame(b, true, "A", 1001, 5001, 1000)
	run := func(b *testing.B, frame []byte) time.Duration {
		_, per, err := RunXDP(be.Program(), 1, frame, b.N, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
		return per
	}
	b.Run("ack/tracked", func(b *testing.B) { run(b, ack) })
	b.Run("data/tracked", func(b *testing.B) { run(b, data) })
	if st, err := lm.Stats(); err != nil || st.TCP < 2 {
		b.Fatalf("the tracker saw %d TCP packets (%v)", st.TCP, err)
	}
	lm.Stop()
	b.Run("ack/off", func(b *testing.B) { run(b, ack) })
	b.Run("data/off", func(b *testing.B) { run(b, data) })
}

// BenchmarkMonitorEvents: records from the BPF tracker into Go handlers.
// The ring buffer is filled by BPF_PROG_TEST_RUN (not timed), then drained
// through Apply into a handler for both hooks of REXMIT (each repeated data
// segment is a retransmission). Target (issue 5): 1M events/s.
func BenchmarkMonitorEvents(b *testing.B) {
	m := monitor.New(monitor.Options{})
	events := 0
	for _, hook := range []monitor.Hook{monitor.HookSend, monitor.HookRecv} {
		m.On(monitor.EvRexmit, hook, func(c *monitor.Conn, side monitor.Side, ev monitor.Event) { events++ })
	}
	be, lm := trackerBench(b, m)
	defer be.Close()
	defer lm.Stop()
	data := tcpFrame(b, true, "A", 1001, 5001, 1000)
	const batch = 50000 // records the 16 MiB ring holds with room to spare
	var drained time.Duration
	for range b.N {
		if _, _, err := RunXDP(be.Program(), 1, data, batch, 0); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := lm.Drain(); err != nil {
			b.Fatal(err)
		}
		drained += time.Since(start)
	}
	st, _ := lm.Stats()
	if st.Lost > 0 {
		b.Fatalf("%d records lost", st.Lost)
	}
	// The first data segment is new data, not a retransmission.
	if events != 2*batch*b.N-2 {
		b.Fatalf("%d events, want %d", events, 2*batch*b.N-2)
	}
	b.ReportMetric(float64(events)/drained.Seconds(), "events/s")
	b.ReportMetric(float64(batch*b.N)/drained.Seconds(), "records/s")
}

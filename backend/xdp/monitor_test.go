package xdp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/monitor"
)

const corpus = "../../../shared/corpus"

// traceLines records every event a monitor raises as one line per event,
// with connection ids renumbered by first appearance (the two trackers
// number them alike, but a line should not depend on it).
type traceLines struct {
	lines []string
	ids   map[uint64]int
	pkt   *int
}

// attach traces every event of m, or with events only those (through
// handlers, so a data-plane tracker sends only what they need).
func (tl *traceLines) attach(m *monitor.Monitor, events []monitor.Event) {
	tl.ids = map[uint64]int{}
	if events != nil {
		for _, ev := range events {
			for _, hook := range []monitor.Hook{monitor.HookSend, monitor.HookRecv} {
				m.On(ev, hook, func(c *monitor.Conn, side monitor.Side, ev monitor.Event) {
					tl.line(ev, hook, c, side)
					if ev == monitor.EvConnEnd && hook == monitor.HookSend {
						// Not bytes: frames of other link types get an
						// Ethernet header for XDP.
						tl.lines = append(tl.lines, fmt.Sprintf("  packets %d/%d stream %d/%d rexmit %d/%d",
							c.Sides[0].Packets, c.Sides[1].Packets,
							c.StreamBytes(0), c.StreamBytes(1), c.Sides[0].Retransmissions, c.Sides[1].Retransmissions))
					}
				})
			}
		}
		return
	}
	m.Trace(tl.line)
}

func (tl *traceLines) line(ev monitor.Event, hook monitor.Hook, c *monitor.Conn, side monitor.Side) {
	{
		if c == nil {
			tl.lines = append(tl.lines, fmt.Sprintf("pkt %d: %s %s", *tl.pkt, ev, hook))
			return
		}
		id, ok := tl.ids[c.ID]
		if !ok {
			id = len(tl.ids) + 1
			tl.ids[c.ID] = id
		}
		tl.lines = append(tl.lines, fmt.Sprintf("pkt %d: %s %s %s conn %d %s>%s %s/%s %s", *tl.pkt, ev, hook, side, id,
			c.Client, c.Server, c.Sides[monitor.Client].State, c.Sides[monitor.Server].State, c.EndReason))
	}
}

// toEthernet gives a frame of another link type an Ethernet header, since
// XDP sees Ethernet.
func toEthernet(lt monitor.LinkType, f []byte) []byte {
	eth := func(typ uint16, l3 []byte) []byte {
		out := make([]byte, 14+len(l3))
		binary.BigEndian.PutUint16(out[12:], typ)
		copy(out[14:], l3)
		return out
	}
	byVersion := func(l3 []byte) []byte {
		if len(l3) > 0 && l3[0]>>4 == 6 {
			return eth(0x86dd, l3)
		}
		return eth(0x0800, l3)
	}
	switch lt {
	case monitor.LinkEthernet:
		return f
	case monitor.LinkLinuxSLL:
		if len(f) >= 16 {
			return eth(binary.BigEndian.Uint16(f[14:]), f[16:])
		}
	case monitor.LinkSLL2:
		if len(f) >= 20 {
			return eth(binary.BigEndian.Uint16(f[0:]), f[20:])
		}
	case monitor.LinkLoop:
		if len(f) >= 4 {
			return byVersion(f[4:])
		}
	default:
		return byVersion(f)
	}
	return eth(0, nil)
}

// TestMonitorConformance drives the BPF tracker with BPF_PROG_TEST_RUN,
// packet by packet, over every corpus capture and checks that its records,
// applied to a monitor, raise the same events in the same order with the
// same states as the Go tracker on the same capture.
func TestMonitorConformance(t *testing.T) {
	requireRoot(t)
	dirs, _ := filepath.Glob(filepath.Join(corpus, "cases", "*"))
	if len(dirs) == 0 {
		t.Skipf("no corpus at %s", corpus)
	}
	sort.Strings(dirs)
	b, err := Load(backend.Options{ConnMax: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Long enough that neither tracker times a connection out: BPF_PROG_TEST_RUN
	// runs on wall time, the Go tracker on capture time.
	opts := monitor.Options{IdleTimeout: 1e6 * time.Hour, Linger: 1e6 * time.Hour}
	compared := 0
	for _, dir := range dirs {
		caps, _ := filepath.Glob(filepath.Join(dir, "*.pcap*"))
		for _, path := range caps {
			name := filepath.Base(dir) + "/" + filepath.Base(path)
			t.Run(name, func(t *testing.T) {
				if skip := conformanceSkip(t, path); skip != "" {
					t.Skip(skip)
				}
				compared++
				// Every event, with frames: the BPF tracker's events and
				// Go's reassembly of the copied payload.
				want, got := conformanceRun(t, b, path, opts, nil)
				if d := firstDiff(want, got); d != "" {
					t.Errorf("all events: %d from Go, %d from BPF records; first difference:\n%s", len(want), len(got), d)
				}
				// Only connection events: records without frames, the
				// counters (stream bytes too) from the BPF tracker alone.
				want, got = conformanceRun(t, b, path, opts, []monitor.Event{monitor.EvConnStart,
					monitor.EvStateChange, monitor.EvRexmit, monitor.EvConnEnd})
				if d := firstDiff(want, got); d != "" {
					t.Errorf("connection events: %d from Go, %d from BPF records; first difference:\n%s", len(want), len(got), d)
				}
			})
		}
	}
	if compared < 10 {
		t.Errorf("only %d captures compared", compared)
	}
}

// conformanceSkip names what a capture has that XDP never sees: packets
// cut by the capture's snap length, and frames larger than a page (loopback
// or GRO captures; XDP without multi-buffer sees a page at most).
func conformanceSkip(t *testing.T, path string) string {
	cut, big := false, false
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = monitor.ReadFrames(f, func(lt monitor.LinkType, frame []byte, ts time.Time, wire int) {
		cut = cut || wire > len(frame)
		big = big || len(frame) > 3000
	})
	switch {
	case err != nil:
		return "unreadable: " + err.Error()
	case cut:
		return "packets cut by the capture's snap length: XDP sees whole packets"
	case big:
		return "frames over 3000 bytes (loopback or GRO captures): XDP without multi-buffer sees a page at most"
	}
	return ""
}

func conformanceRun(t *testing.T, b *Backend, path string, opts monitor.Options, events []monitor.Event) (want, got []string) {
	pkt := 0
	ref := monitor.New(opts)
	refLines := &traceLines{pkt: &pkt}
	refLines.attach(ref, events)

	mirror := monitor.New(opts)
	mirLines := &traceLines{pkt: &pkt}
	mirLines.attach(mirror, events)
	resetMonitorMaps(t, b)
	lm, err := b.StartTracker(mirror, MonitorOptions{Ifindexes: []int{1}})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Stop()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = monitor.ReadFrames(f, func(lt monitor.LinkType, frame []byte, ts time.Time, _ int) {
		pkt++
		ref.Process(lt, frame, ts)
		if _, _, err := TestRun(b.objs.MbxXdp, 1, toEthernet(lt, frame)); err != nil {
			t.Fatalf("packet %d: %v", pkt, err)
		}
		if err := lm.Drain(); err != nil {
			t.Fatalf("packet %d: %v", pkt, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	pkt++
	ref.Close()
	lm.Refresh()
	mirror.Close()
	st, _ := lm.Stats()
	if st.Lost > 0 {
		t.Errorf("%d records lost", st.Lost)
	}
	if rs := ref.Stats(); st.Reassembled != rs.Reassembled || st.FragmentsUntracked > 0 {
		t.Errorf("fragments: %d datagrams reinjected, %d fragments untracked; Go reassembled %d", st.Reassembled, st.FragmentsUntracked, rs.Reassembled)
	}
	return refLines.lines, mirLines.lines
}

func resetMonitorMaps(t *testing.T, b *Backend) {
	var (
		k    mbxMonKey
		c    mbxMonConn
		keys []mbxMonKey
	)
	it := b.objs.MonConns.Iterate()
	for it.Next(&k, &c) {
		keys = append(keys, k)
	}
	for i := range keys {
		if err := b.objs.MonConns.Delete(&keys[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.objs.MonIds.Put(uint32(0), uint64(0)); err != nil {
		t.Fatal(err)
	}
}

func firstDiff(want, got []string) string {
	for i := range max(len(want), len(got)) {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if w != g {
			lo := max(i-3, 0)
			ctx := strings.Join(want[lo:i], "\n   ")
			return fmt.Sprintf("   %s\nGo:  %s\nBPF: %s", ctx, w, g)
		}
	}
	return ""
}

// A connection both sides stopped monitoring sends no more records: the
// tracker goes on counting it in the map, Go hears nothing.
func TestMonitorStopMonitoring(t *testing.T) {
	b := loadSmall(t)
	m := monitor.New(monitor.Options{})
	seen := 0
	m.On(monitor.EvPktIn, monitor.HookRecv, func(c *monitor.Conn, _ monitor.Side, _ monitor.Event) {
		if seen++; seen == 3 {
			c.StopMonitoring(monitor.Client)
			c.StopMonitoring(monitor.Server)
		}
	})
	lm, err := b.StartTracker(m, MonitorOptions{Ifindexes: []int{1}})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Stop()
	cli, srv := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.1.1:80")
	seg := tcpSeg
	frames := [][]byte{seg(cli, srv, "S", 100, 0), seg(srv, cli, "SA", 500, 101), seg(cli, srv, "A", 101, 501)}
	for i := range 5 {
		frames = append(frames, seg(cli, srv, "A", 101, 501+uint32(i)))
	}
	for i, f := range frames {
		if _, _, err := TestRun(b.objs.MbxXdp, 1, f); err != nil {
			t.Fatal(err)
		}
		if err := lm.Drain(); err != nil {
			t.Fatalf("packet %d: %v", i+1, err)
		}
	}
	st, err := lm.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if seen != 3 || st.Records != 3 || st.TCP != uint64(len(frames)) {
		t.Errorf("handlers saw %d packets, %d records for %d TCP packets; want 3 and 3 of %d", seen, st.Records, st.TCP, len(frames))
	}
}

// Sampled monitoring tracks about the asked fraction of connections, and
// both directions of a connection agree on it.
func TestMonitorSample(t *testing.T) {
	b := loadSmall(t)
	lm, err := b.StartTracker(monitor.New(monitor.Options{}), MonitorOptions{Ifindexes: []int{1}, Sample: 0.25})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Stop()
	srv := netip.MustParseAddrPort("198.18.1.1:80")
	const n = 2000
	for i := range n {
		cli := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(1 + i%200)}), uint16(20000+i))
		for _, f := range [][]byte{tcpSeg(cli, srv, "S", 100, 0), tcpSeg(srv, cli, "SA", 500, 101)} {
			if _, _, err := TestRun(b.objs.MbxXdp, 1, f); err != nil {
				t.Fatal(err)
			}
		}
	}
	st, err := lm.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Conns < n/5 || st.Conns > n*3/10 || st.Filtered != 2*(n-st.Conns) {
		t.Errorf("sample 0.25 of %d connections: %d tracked, %d packets not (want 2 per untracked one)", n, st.Conns, st.Filtered)
	}
}

// tcpSeg builds an Ethernet/IPv4/TCP segment (flags: S, A).
func tcpSeg(from, to netip.AddrPort, flags string, seq, ack uint32) []byte {
	tcp := &layers.TCP{SrcPort: layers.TCPPort(from.Port()), DstPort: layers.TCPPort(to.Port()), Seq: seq, Ack: ack,
		SYN: strings.Contains(flags, "S"), ACK: strings.Contains(flags, "A"), Window: 100}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: from.Addr().AsSlice(), DstIP: to.Addr().AsSlice()}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: make([]byte, 6), DstMAC: make([]byte, 6), EthernetType: layers.EthernetTypeIPv4}, ip, tcp)
	return buf.Bytes()
}

// The tracker sees TCP inside PPPoE and MPLS as Go's decoder does; an MPLS
// stack deeper than MON_MPLS_LABELS is an orphan in XDP (documented).
func TestMonitorEncapsulations(t *testing.T) {
	b := loadSmall(t)
	syn := tcpSeg(netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.1.1:80"), "S", 100, 0)
	mpls := func(labels int, ethType uint16) []byte {
		f := append([]byte(nil), syn[:12]...)
		f = binary.BigEndian.AppendUint16(f, ethType)
		for i := range labels {
			bos := byte(0)
			if i == labels-1 {
				bos = 1
			}
			f = append(f, 0, 1, bos, 64) // label 16
		}
		return append(f, syn[14:]...)
	}
	pppoe := func(proto uint16) []byte {
		f := append([]byte(nil), syn[:12]...)
		f = binary.BigEndian.AppendUint16(f, 0x8864)
		f = append(f, 0x11, 0, 0, 1) // version/type, code, session
		f = binary.BigEndian.AppendUint16(f, uint16(len(syn)-14+2))
		f = binary.BigEndian.AppendUint16(f, proto)
		return append(f, syn[14:]...)
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		tcp   bool // tracked as TCP (else an orphan)
	}{
		{"plain", syn, true},
		{"pppoe", pppoe(0x0021), true},
		{"pppoe-lcp", pppoe(0xc021), false},
		{"mpls-1", mpls(1, 0x8847), true},
		{"mpls-4-multicast", mpls(4, 0x8848), true},
		{"mpls-5", mpls(5, 0x8847), false},
		{"mpls-cut", mpls(2, 0x8847)[:20], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resetMonitorMaps(t, b)
			lm, err := b.StartTracker(monitor.New(monitor.Options{}), MonitorOptions{Ifindexes: []int{1}})
			if err != nil {
				t.Fatal(err)
			}
			defer lm.Stop()
			before, _ := lm.Stats()
			if _, _, err := TestRun(b.objs.MbxXdp, 1, tc.frame); err != nil {
				t.Fatal(err)
			}
			after, _ := lm.Stats()
			tcp, conns := after.TCP-before.TCP, after.Conns-before.Conns
			if tc.tcp && (tcp != 1 || conns != 1) || !tc.tcp && tcp != 0 {
				t.Errorf("%d TCP packets, %d connections; want TCP %v", tcp, conns, tc.tcp)
			}
			var p monitor.Packet
			goTCP := monitor.Decode(monitor.LinkEthernet, tc.frame, &p) == nil && p.TCP
			if goTCP != tc.tcp && tc.name != "mpls-5" {
				t.Errorf("Go's decoder: TCP %v, XDP: %v", goTCP, tc.tcp)
			}
		})
	}
}

// loadSmall loads the datapath with a small connection table (root only),
// closed when the test ends.
func loadSmall(t *testing.T) *Backend {
	t.Helper()
	requireRoot(t)
	b, err := Load(backend.Options{ConnMax: 1024})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

package datapath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/lb"
)

const workersConfig = fnatConfig + `
-A -u 198.18.0.100:9000 -s rr
-a -u 198.18.0.100:9000 -r 198.18.1.2 -b
-a -u 198.18.0.100:9000 -r 198.18.1.3 -b
--add-laddr -z 198.18.1.200 -u 198.18.0.100:9000 -F lan0
-A -u 198.18.0.100:53 -s rr
-a -u 198.18.0.100:53 -r 198.18.1.2 -m
-a -u 198.18.0.100:53 -r 198.18.1.3 -m
`

// workerSet is n datapaths sharing two ports, as n polling workers run
// them, with clients 198.18.0.2-41 known on the WAN side.
func workerSet(t *testing.T, n int) []*Datapath {
	t.Helper()
	shared := NewShared()
	var dps []*Datapath
	for w := range n {
		d := fnatPairOpts(t, workersConfig, Options{Workers: n, Worker: w, Shared: shared})
		for c := range 40 {
			if err := d.SetNeighbor(0, client(c), mac("02:00:00:00:08:08")); err != nil {
				t.Fatal(err)
			}
		}
		dps = append(dps, d)
	}
	return dps
}

func client(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)}) }

func datagram(src, dst string, sport, dport uint16, payload int) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6), EthernetType: layers.EthernetTypeIPv4},
		ip, udp, gopacket.Payload(make([]byte, payload)))
	return buf.Bytes()
}

// owners asks every worker for frame's owner: they must agree, whoever
// received it.
func owners(t *testing.T, dps []*Datapath, frame []byte, what string) int {
	t.Helper()
	o := dps[0].Owner(frame)
	for _, d := range dps[1:] {
		if d.Owner(frame) != o {
			t.Fatalf("%s: workers disagree on the owner", what)
		}
	}
	return o
}

// outTuple is an output frame's IPv4 addresses and ports.
func outTuple(f []byte) (src, dst string, sport, dport uint16) {
	ip := f[14:]
	l4 := ip[int(ip[0]&0xf)*4:]
	return net.IP(ip[12:16]).String(), net.IP(ip[16:20]).String(), binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
}

// With several workers each connection's packets, both ways, are owned by
// the worker that made it, whichever worker receives them: Full-NAT
// replies by their local port (each worker allocates its own), NAT
// replies by their client, ICMP errors by the connection they quote, a
// reply datagram's later fragment by its first; and another worker could
// not have forwarded them.
func TestWorkerOwnership(t *testing.T) {
	const n = 3
	dps := workerSet(t, n)
	perWorker := make([]int, n)
	for c := range 40 {
		cl := client(c).String()
		for _, svc := range []struct {
			proto string
			port  uint16
		}{{"tcp", 80}, {"udp", 9000}, {"udp", 53}} {
			what := fmt.Sprintf("%s %s:%d", svc.proto, cl, svc.port)
			in := segment(cl, "198.18.0.100", 40000, svc.port, true)
			if svc.proto == "udp" {
				in = datagram(cl, "198.18.0.100", 40000, svc.port, 10)
			}
			w := owners(t, dps, in, what)
			perWorker[w]++
			if v, _ := dps[w].Process(0, in); v != Redirect {
				t.Fatalf("%s: %s on its owner", what, v)
			}
			src, dst, sport, dport := outTuple(in)
			if svc.port != 53 && int(sport)%n != w {
				t.Fatalf("%s: worker %d chose local port %d", what, w, sport)
			}
			var reply []byte
			if svc.proto == "tcp" {
				reply = segment(dst, src, dport, sport, false)
			} else {
				reply = datagram(dst, src, dport, sport, 10)
			}
			if o := owners(t, dps, reply, what+" reply"); o != w {
				t.Fatalf("%s: the reply is owned by worker %d, the connection by %d", what, o, w)
			}
			other := dps[(w+1)%n]
			if v, _ := other.Process(1, append([]byte(nil), reply...)); v == Redirect {
				t.Fatalf("%s: another worker forwarded the reply without the connection", what)
			}
			quote := append([]byte(nil), in[14:14+28]...)
			if o := owners(t, dps, icmpUnreachable(dst, src, quote), what+" ICMP error"); o != w {
				t.Fatalf("%s: an ICMP error about it is owned by worker %d, not %d", what, o, w)
			}
			if v, _ := dps[w].Process(1, reply); v != Redirect {
				t.Fatalf("%s: the reply on its owner: %s", what, v)
			}
			if svc.port == 9000 {
				first, later := fragments(dst, src, dport, sport, uint16(c+1))
				if o := owners(t, dps, first, what+" first fragment"); o != w {
					t.Fatalf("%s: first fragment owned by %d", what, o)
				}
				if o := owners(t, dps, later, what+" later fragment"); o != w {
					t.Fatalf("%s: later fragment owned by %d, not %d", what, o, w)
				}
			}
		}
	}
	for w, k := range perWorker {
		if k == 0 {
			t.Errorf("worker %d owns no connection: %v", w, perWorker)
		}
	}
}

// icmpUnreachable is a port unreachable from src to dst quoting quote.
func icmpUnreachable(src, dst string, quote []byte) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6), EthernetType: layers.EthernetTypeIPv4},
		ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quote))
	return buf.Bytes()
}

// fragments are a UDP datagram's first fragment and a later one.
func fragments(src, dst string, sport, dport, id uint16) (first, later []byte) {
	first = datagram(src, dst, sport, dport, 64)
	ip := first[14:]
	binary.BigEndian.PutUint16(ip[4:], id)
	binary.BigEndian.PutUint16(ip[6:], 0x2000)
	later = append([]byte(nil), first...)
	binary.BigEndian.PutUint16(later[14+6:], 72/8)
	for i := 14 + 20; i < len(later); i++ {
		later[i] = 0xab // no UDP header: payload
	}
	return first, later
}

// Persistence holds across workers: one client's connections, spread over
// the workers by their ports, all reach the real server its first got.
func TestWorkerPersistence(t *testing.T) {
	const n = 2
	dps := workerSet(t, n)
	for _, d := range dps {
		ops := workersConfig + `
-A -t 198.18.0.100:443 -s rr -p 300
-a -t 198.18.0.100:443 -r 198.18.1.2 -b
-a -t 198.18.0.100:443 -r 198.18.1.3 -b
--add-laddr -z 198.18.1.200 -t 198.18.0.100:443 -F lan0`
		applyConfig(t, d, ops)
	}
	used := map[int]bool{}
	reals := map[string]bool{}
	for port := range uint16(20) {
		in := segment("198.18.0.2", "198.18.0.100", 41000+port, 443, true)
		w := owners(t, dps, in, "persistent")
		used[w] = true
		if v, _ := dps[w].Process(0, in); v != Redirect {
			t.Fatalf("connection %d: %s", port, v)
		}
		_, rs, _, _ := outTuple(in)
		reals[rs] = true
	}
	if len(used) != n || len(reals) != 1 {
		t.Errorf("workers used %v, real servers %v: want every worker and one real server", used, reals)
	}
}

// The price of several workers on each received packet: finding its
// owner (a Full-NAT reply to a LIP, and a client's packet).
func BenchmarkOwner(b *testing.B) {
	d := fnatPairOpts(b, workersConfig, Options{Workers: 2, Shared: NewShared()})
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"reply", segment("198.18.1.2", "198.18.1.200", 80, 40001, false)},
		{"client", segment("198.18.0.2", "198.18.0.100", 40000, 80, false)},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				d.Owner(c.frame)
			}
		})
	}
}

// Connections saved by one set of workers (Handover) and restored into a
// new set, of the same size or not, keep forwarding: a reply is rewritten
// exactly as before the restart, by whichever worker owns it now.
func TestSaveRestore(t *testing.T) {
	for _, after := range []int{2, 3} {
		t.Run(fmt.Sprintf("2to%d", after), func(t *testing.T) {
			old := workerSet(t, 2)
			type conn struct{ reply, want []byte }
			var conns []conn
			for c := range 20 {
				for _, port := range []uint16{80, 53} {
					in := segment(client(c).String(), "198.18.0.100", 40000, port, true)
					if port == 53 {
						in = datagram(client(c).String(), "198.18.0.100", 40000, port, 10)
					}
					w := owners(t, old, in, "new")
					if v, _ := old[w].Process(0, in); v != Redirect {
						t.Fatalf("%v", v)
					}
					src, dst, sport, dport := outTuple(in)
					reply := segment(dst, src, dport, sport, false)
					if port == 53 {
						reply = datagram(dst, src, dport, sport, 10)
					}
					want := append([]byte(nil), reply...)
					if v, _ := old[w].Process(1, want); v != Redirect {
						t.Fatalf("reply before: %v", v)
					}
					conns = append(conns, conn{reply, want})
				}
			}
			var saved []SavedConn
			for _, d := range old {
				saved = append(saved, d.Save()...)
			}
			if len(saved) != 20*2+20*2 {
				t.Fatalf("saved %d entries", len(saved))
			}
			var counters []SavedCounters
			for _, d := range old {
				counters = append(counters, d.SaveCounters()...)
			}
			fresh := workerSet(t, after)
			total := 0
			for _, d := range fresh {
				n, dropped := d.Restore(saved)
				if dropped != 0 {
					t.Errorf("%d entries dropped", dropped)
				}
				total += n
			}
			if total != len(saved) {
				t.Fatalf("restored %d of %d entries", total, len(saved))
			}
			// The IPVS counters continue: the same sums per real server as
			// before the restart. (Active and inactive counts are rebuilt
			// from the connections; a connection whose halves now live on
			// two workers is counted by both, so only an unchanged worker
			// count gives the same sums.)
			fresh[0].RestoreCounters(counters)
			before, afterSums := realSums(old), realSums(fresh)
			if len(before) == 0 {
				t.Fatal("no real server counted anything")
			}
			for ref, want := range before {
				got := afterSums[ref]
				if after != len(old) {
					got.Active, got.Inactive, want.Active, want.Inactive = 0, 0, 0, 0
				}
				if got != want {
					t.Errorf("%v after the restart: %+v, want %+v", ref, got, want)
				}
			}
			for i, c := range conns {
				w := owners(t, fresh, c.reply, "reply")
				got := append([]byte(nil), c.reply...)
				if v, _ := fresh[w].Process(1, got); v != Redirect || string(got) != string(c.want) {
					t.Fatalf("connection %d after the restart: %v, rewritten alike %v", i, v, string(got) == string(c.want))
				}
			}
		})
	}
}

// realSums adds up the workers' per-real counters and connection counts
// (what ipvsadm -ln --stats shows), real servers that counted nothing left out.
func realSums(ws []*Datapath) map[string]backend.RealStatus {
	sums := map[string]backend.RealStatus{}
	for _, d := range ws {
		d.RealCounters(func(svc lb.ServiceKey, real netip.AddrPort, st backend.RealStatus) {
			k := svc.String() + " " + real.String()
			sum := sums[k]
			sum.Counters.Add(st.Counters)
			sum.Active += st.Active
			sum.Inactive += st.Inactive
			if sum != (backend.RealStatus{}) {
				sums[k] = sum
			}
		})
	}
	return sums
}

// Finding a packet's owner allocates nothing (it runs on every packet
// with several workers).
func TestOwnerNoAllocations(t *testing.T) {
	d := fnatPairOpts(t, workersConfig, Options{Workers: 2, Shared: NewShared()})
	frames := [][]byte{
		segment("198.18.1.2", "198.18.1.200", 80, 40001, false),
		segment("198.18.0.2", "198.18.0.100", 40000, 80, false),
		datagram("198.18.1.2", "198.18.0.2", 53, 40000, 10),
	}
	if n := testing.AllocsPerRun(1000, func() {
		for _, f := range frames {
			d.Owner(f)
		}
	}); n != 0 {
		t.Errorf("%.1f allocations per round", n)
	}
}

// IPv6 Full-NAT and NAT64 over three workers: the reply (IPv6 to the IPv6
// LIP, or IPv4 to NAT64's IPv4 LIP) is owned by the worker that made the
// connection, whoever receives it.
func TestWorkerOwnership6(t *testing.T) {
	for _, file := range []string{"fnat6", "nat64"} {
		t.Run(file, func(t *testing.T) {
			f, err := vectors.Find(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := f.ConfigModel()
			if err != nil {
				t.Fatal(err)
			}
			shared := NewShared()
			var dps []*Datapath
			var idx map[string]int
			for w := range 3 {
				d, ports, err := FromVectorFile(f, Options{Workers: 3, Worker: w, Shared: shared})
				if err != nil {
					t.Fatal(err)
				}
				if err := d.Apply(cfg); err != nil {
					t.Fatal(err)
				}
				dps, idx = append(dps, d), ports
			}
			used := map[int]bool{}
			for sport := 40000; sport < 40030; sport++ {
				in, err := f.Build(vectors.Packet{Iface: "wan0", Eth: map[string]any{"src": "client", "dst": "wan0"},
					IP:  map[string]any{"src": "fd00:198::a:2", "dst": "fd00:198::a:100"},
					TCP: map[string]any{"sport": sport, "dport": 80, "flags": "S"}})
				if err != nil {
					t.Fatal(err)
				}
				w := owners(t, dps, in, "SYN")
				used[w] = true
				buf := append(make([]byte, 64), in...)
				v, _, off, n := dps[w].ProcessAt(idx["wan0"], buf, 64, len(in))
				if v != Redirect {
					t.Fatalf("sport %d: %s", sport, v)
				}
				reply := answer(t, buf[off:off+n])
				if o := owners(t, dps, reply, "reply"); o != w {
					t.Fatalf("sport %d: the reply is owned by worker %d, the connection by %d", sport, o, w)
				}
				// Room in front: NAT64's reply grows into an IPv6 header.
				if v, _, _, _ := dps[w].ProcessAt(idx["lan0"], append(make([]byte, 64), reply...), 64, len(reply)); v != Redirect {
					t.Fatalf("sport %d: the reply on its owner: %s", sport, v)
				}
			}
			if len(used) != 3 {
				t.Errorf("30 connections used workers %v", used)
			}
		})
	}
}

// answer is the real server's reply to a translated TCP segment (IPv4 or
// IPv6): addresses and ports swapped.
func answer(t *testing.T, frame []byte) []byte {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp == nil {
		t.Fatalf("not TCP: %x", frame)
	}
	var ip gopacket.SerializableLayer
	eth := &layers.Ethernet{SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6)}
	reply := &layers.TCP{SrcPort: tcp.DstPort, DstPort: tcp.SrcPort, SYN: true, ACK: true, Window: 100}
	if v4, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		eth.EthernetType = layers.EthernetTypeIPv4
		r := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: v4.DstIP, DstIP: v4.SrcIP}
		_ = reply.SetNetworkLayerForChecksum(r)
		ip = r
	} else if v6, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		eth.EthernetType = layers.EthernetTypeIPv6
		r := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: v6.DstIP, DstIP: v6.SrcIP}
		_ = reply.SetNetworkLayerForChecksum(r)
		ip = r
	} else {
		t.Fatalf("not IP: %x", frame)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, reply); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

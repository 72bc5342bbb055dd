package datapath

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/cli/ipvsadm"
	"github.com/mbx-net/mbx/lb"
)

// fnatPair is a two-port Full-NAT datapath: clients on port 0 (wan),
// real servers on port 1 (lan).
func fnatPair(tb testing.TB, config string) *Datapath {
	return fnatPairOpts(tb, config, Options{})
}

func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

func fnatPairOpts(tb testing.TB, config string, opts Options) *Datapath {
	tb.Helper()
	d, err := New([]Port{
		{Name: "wan0", MAC: mac("02:00:00:00:00:01"), Prefixes: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")},
			Addrs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}},
		{Name: "lan0", MAC: mac("02:00:00:00:00:02"), Prefixes: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
			Addrs: []netip.Addr{netip.MustParseAddr("198.18.1.1")}},
	}, opts)
	if err != nil {
		tb.Fatal(err)
	}
	for _, n := range []struct {
		port int
		ip   string
	}{{0, "198.18.0.2"}, {1, "198.18.1.2"}, {1, "198.18.1.3"}} {
		if err := d.SetNeighbor(n.port, netip.MustParseAddr(n.ip), mac("02:00:00:00:09:09")); err != nil {
			tb.Fatal(err)
		}
	}
	applyConfig(tb, d, config)
	return d
}

// applyConfig applies ipvsadm lines.
func applyConfig(tb testing.TB, d *Datapath, config string) {
	tb.Helper()
	ops, err := ipvsadm.ParseLines(config)
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(ops)
	if err != nil {
		tb.Fatal(err)
	}
	if err := d.Apply(cfg); err != nil {
		tb.Fatal(err)
	}
}

const fnatConfig = `
-A -t 198.18.0.100:80 -s mh
-a -t 198.18.0.100:80 -r 198.18.1.2 -b
-a -t 198.18.0.100:80 -r 198.18.1.3 -b
--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0
`

func segment(src, dst string, sport, dport uint16, syn bool) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: syn, ACK: !syn, Window: 100}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6), EthernetType: layers.EthernetTypeIPv4}, ip, tcp)
	return buf.Bytes()
}

// An established packet allocates nothing; neither does a new connection
// (the table is a preallocated slab) once the map has grown.
func TestNoAllocations(t *testing.T) {
	d := fnatPair(t, fnatConfig)
	syn := segment("198.18.0.2", "198.18.0.100", 40000, 80, true)
	if v, _ := d.Process(0, append([]byte(nil), syn...)); v != Redirect {
		t.Fatalf("SYN: %s", v)
	}
	ack := segment("198.18.0.2", "198.18.0.100", 40000, 80, false)
	buf := make([]byte, len(ack))
	if n := testing.AllocsPerRun(1000, func() {
		copy(buf, ack)
		d.Process(0, buf)
	}); n != 0 {
		t.Errorf("%.1f allocations per established packet", n)
	}
}

// Idle connections leave the table after their state's timeout (a SYN
// that was never answered: SYN_RECV, 30 s in IPVS's defaults), both entries.
func TestSweep(t *testing.T) {
	d := fnatPair(t, fnatConfig)
	start := time.Now()
	d.Tick(start)
	for port := range uint16(10) {
		if v, _ := d.Process(0, segment("198.18.0.2", "198.18.0.100", 40000+port, 80, true)); v != Redirect {
			t.Fatalf("SYN %d: %s", port, v)
		}
	}
	if d.Conns() != 20 {
		t.Fatalf("%d entries for 10 connections", d.Conns())
	}
	d.Tick(start.Add(10 * time.Second))
	if n := d.Sweep(); n != 0 {
		t.Errorf("swept %d entries after 10 s", n)
	}
	d.Tick(start.Add(2 * time.Minute))
	if n := d.Sweep(); n != 20 || d.Conns() != 0 {
		t.Errorf("swept %d entries after 2 min, %d left", n, d.Conns())
	}
	if d.Counters()["entry_deleted"] != 20 {
		t.Errorf("entry_deleted %d", d.Counters()["entry_deleted"])
	}
}

// Apply refuses what this datapath does not run yet, whole.
func TestApplyRefuses(t *testing.T) {
	d := fnatPair(t, fnatConfig)
	for _, c := range []string{
		"-A -t 198.18.0.100:81 -s rr\n-a -t 198.18.0.100:81 -r 198.19.9.9 -i", // a tunnel with no route
		"-A -t 198.18.0.100:81 -s rr\n-a -t 198.18.0.100:81 -r 198.18.9.9 -g", // DR to a real server on no port's network
	} {
		ops, err := ipvsadm.ParseLines(fnatConfig + c)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := (&lb.Config{}).Do(ops)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Apply(cfg); err == nil {
			t.Errorf("applied %q", c)
		}
	}
	if len(d.services) != 1 {
		t.Errorf("%d services after refused configurations, want the first one", len(d.services))
	}
}

// Per-packet cost of the Go Full-NAT path: an established packet, and a
// new connection's SYN (each run a new client port).
func BenchmarkFullNAT(b *testing.B) {
	b.Run("established", func(b *testing.B) {
		d := fnatPair(b, fnatConfig)
		d.Process(0, segment("198.18.0.2", "198.18.0.100", 40000, 80, true))
		ack := segment("198.18.0.2", "198.18.0.100", 40000, 80, false)
		buf := make([]byte, len(ack))
		for b.Loop() {
			copy(buf, ack)
			d.Process(0, buf)
		}
	})
	b.Run("syn", func(b *testing.B) {
		d := fnatPair(b, fnatConfig)
		syn := segment("198.18.0.2", "198.18.0.100", 1, 80, true)
		buf := make([]byte, len(syn))
		port := uint16(0)
		for b.Loop() {
			if port++; port%16384 == 0 {
				// One LIP has ~64K ports per real server, and 16 probes
				// find a free one while most are: start over (untimed).
				b.StopTimer()
				d.conns = newConns(d.opts.ConnMax * 2)
				b.StartTimer()
			}
			copy(buf, syn)
			buf[34], buf[35] = byte(port>>8), byte(port)
			if v, _ := d.Process(0, buf); v != Redirect {
				b.Fatalf("SYN %d: %s (%v)", port, v, d.Counters())
			}
		}
	})
}

func arpFrame(op uint16, srcMAC string, spa, tpa string) []byte {
	f := make([]byte, 42)
	copy(f[0:6], mac("ff:ff:ff:ff:ff:ff"))
	copy(f[6:12], mac(srcMAC))
	f[12], f[13] = 0x08, 0x06
	a := f[14:]
	a[1], a[2], a[4], a[5], a[7] = 1, 0x08, 6, 4, byte(op)
	copy(a[8:14], mac(srcMAC))
	s, t := netip.MustParseAddr(spa).As4(), netip.MustParseAddr(tpa).As4()
	copy(a[14:18], s[:])
	copy(a[24:28], t[:])
	return f
}

// With ARP on (DPDK owns the port): requests for a VIP, a LIP or a port's
// own address are answered in place; others go to the kernel; senders are
// learnt; a next hop without an entry is asked for, once per 100 ms.
func TestARP(t *testing.T) {
	d := fnatPairOpts(t, fnatConfig, Options{ARP: true})
	d.neigh = map[netip.Addr]neighbor{} // nothing known
	for _, c := range []struct {
		port   int
		target string
		answer bool
	}{{0, "198.18.0.100", true}, {1, "198.18.1.200", true}, {0, "198.18.0.1", true}, {1, "198.18.1.1", true},
		{1, "198.18.0.1", false}, {0, "198.18.0.77", false}} {
		sender := "198.18.0.2"
		if c.port == 1 {
			sender = "198.18.1.2"
		}
		f := arpFrame(1, "02:00:00:00:0a:0b", sender, c.target)
		v, out := d.Process(c.port, f)
		if !c.answer {
			if v != Pass {
				t.Errorf("request for %s on port %d: %s, want pass", c.target, c.port, v)
			}
			continue
		}
		want := netip.MustParseAddr(c.target).As4()
		if v != Tx || out != c.port || f[21] != 2 || string(f[22:28]) != string(d.macs[c.port][:]) ||
			string(f[28:32]) != string(want[:]) || string(f[0:6]) != string(mac("02:00:00:00:0a:0b")) {
			t.Errorf("request for %s on port %d: %s out %d, reply % x", c.target, c.port, v, out, f)
		}
	}
	if n, ok := d.neigh[netip.MustParseAddr("198.18.1.2")]; !ok || n.port != 1 {
		t.Errorf("sender 198.18.1.2 not learnt on port 1: %v", d.neigh)
	}
	// rs2 (198.18.1.3) is unknown: a SYN scheduled to it is passed and
	// rs2 is asked for, once.
	delete(d.neigh, netip.MustParseAddr("198.18.1.2"))
	d.Tick(time.Now())
	for port := range uint16(8) {
		d.Process(0, segment("198.18.0.2", "198.18.0.100", 50000+port, 80, true))
	}
	buf := make([]byte, 64)
	asked := map[string]bool{}
	for {
		n, port := d.Resolve(buf)
		if n == 0 {
			break
		}
		if n != 42 || port != 1 || buf[21] != 1 || string(buf[28:32]) != string([]byte{198, 18, 1, 1}) {
			t.Fatalf("request % x on port %d", buf[:n], port)
		}
		ip := netip.AddrFrom4([4]byte(buf[38:42])).String()
		if asked[ip] {
			t.Errorf("%s asked for twice within 100 ms", ip)
		}
		asked[ip] = true
	}
	if !asked["198.18.1.2"] || !asked["198.18.1.3"] {
		t.Errorf("asked for %v, want both real servers", asked)
	}
	if d.Counters()["pass_no_neigh"] != 8 {
		t.Errorf("pass_no_neigh %d", d.Counters()["pass_no_neigh"])
	}
	// The reply teaches the address; the next packets go out.
	d.Process(1, arpFrame(2, "02:00:00:00:02:03", "198.18.1.3", "198.18.1.1"))
	d.Process(1, arpFrame(2, "02:00:00:00:02:02", "198.18.1.2", "198.18.1.1"))
	if v, _ := d.Process(0, segment("198.18.0.2", "198.18.0.100", 50000, 80, false)); v != Redirect {
		t.Errorf("after the ARP replies: %s", v)
	}
}

// lc sends each new connection to the real server with the fewest
// (established count 256 times an inactive one); wlc divides by weight;
// the counts follow state changes and deletions.
func TestLeastConnection(t *testing.T) {
	d := fnatPair(t, `
-A -t 198.18.0.100:80 -s wlc
-a -t 198.18.0.100:80 -r 198.18.1.2 -b -w 3
-a -t 198.18.0.100:80 -r 198.18.1.3 -b -w 1
--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0
`)
	d.Tick(time.Now())
	for port := range uint16(8) {
		if v, _ := d.Process(0, segment("198.18.0.2", "198.18.0.100", 30000+port, 80, true)); v != Redirect {
			t.Fatalf("SYN %d: %s", port, v)
		}
	}
	got := map[string]backend.RealStatus{}
	d.RealCounters(func(_ lb.ServiceKey, r netip.AddrPort, st backend.RealStatus) { got[r.Addr().String()] = st })
	if got["198.18.1.2"].Conns != 6 || got["198.18.1.3"].Conns != 2 {
		t.Errorf("wlc 3:1 over 8 connections: %+v", got)
	}
	if got["198.18.1.2"].Inactive != 6 || got["198.18.1.2"].Active != 0 {
		t.Errorf("new connections should be inactive: %+v", got["198.18.1.2"])
	}
	d.Tick(time.Now().Add(time.Hour))
	d.Sweep()
	got = map[string]backend.RealStatus{}
	d.RealCounters(func(_ lb.ServiceKey, r netip.AddrPort, st backend.RealStatus) { got[r.Addr().String()] = st })
	if got["198.18.1.2"].Inactive != 0 || got["198.18.1.3"].Inactive != 0 {
		t.Errorf("after expiry: %+v", got)
	}
}

// With -p, a client's new connections keep its real server.
func TestPersistence(t *testing.T) {
	d := fnatPair(t, `
-A -t 198.18.0.100:80 -s rr -p 60
-a -t 198.18.0.100:80 -r 198.18.1.2 -b
-a -t 198.18.0.100:80 -r 198.18.1.3 -b
--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0
`)
	d.Tick(time.Now())
	seen := map[byte]bool{}
	for port := range uint16(6) {
		f := segment("198.18.0.2", "198.18.0.100", 31000+port, 80, true)
		if v, _ := d.Process(0, f); v != Redirect {
			t.Fatalf("SYN %d: %s", port, v)
		}
		seen[f[33]] = true // the real server's last address byte
	}
	if len(seen) != 1 {
		t.Errorf("one client went to %d real servers under persistence", len(seen))
	}
}

// With ARP on, an echo request to a VIP, a LIP or a port's address is
// answered in place (valid checksums); one to another address is passed.
func TestEchoReply(t *testing.T) {
	d := fnatPairOpts(t, fnatConfig, Options{ARP: true})
	for _, c := range []struct {
		dst    string
		answer bool
	}{{"198.18.0.100", true}, {"198.18.1.200", true}, {"198.18.0.1", true}, {"198.18.0.77", false}} {
		ip := &layers.IPv4{Version: 4, TTL: 9, Protocol: layers.IPProtocolICMPv4,
			SrcIP: net.ParseIP("198.18.0.2").To4(), DstIP: net.ParseIP(c.dst).To4()}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 7, Seq: 1}
		buf := gopacket.NewSerializeBuffer()
		_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			&layers.Ethernet{SrcMAC: mac("02:00:00:00:0a:0b"), DstMAC: mac("02:00:00:00:00:01"), EthernetType: layers.EthernetTypeIPv4},
			ip, icmp, gopacket.Payload("ping"))
		f := buf.Bytes()
		v, out := d.Process(0, f)
		if !c.answer {
			if v != Pass {
				t.Errorf("echo to %s: %s, want pass", c.dst, v)
			}
			continue
		}
		if v != Tx || out != 0 {
			t.Fatalf("echo to %s: %s out %d", c.dst, v, out)
		}
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		rip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		ric, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if rip == nil || ric == nil || ric.TypeCode.Type() != 0 || rip.SrcIP.String() != c.dst || rip.DstIP.String() != "198.18.0.2" {
			t.Fatalf("reply to %s: % x", c.dst, f)
		}
		if err := vectors.VerifyChecksums(f); err != nil {
			t.Errorf("reply to %s: %v", c.dst, err)
		}
		if sum := fold(sumWords(f[34:])); sum != 0xffff { // the ICMP message sums to all ones
			t.Errorf("reply to %s: ICMP checksum off (sum %#x)", c.dst, sum)
		}
	}
}

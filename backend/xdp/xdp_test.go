package xdp

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/flow"
)

func syn(sport int) vectors.Packet {
	return vectors.Packet{Iface: "wan0",
		Eth: map[string]any{"src": "client", "dst": "wan0"},
		IP:  map[string]any{"src": "198.18.0.2", "dst": "198.18.0.100"},
		TCP: map[string]any{"sport": sport, "dport": 80, "flags": "S"}}
}

func ack(sport int) vectors.Packet {
	p := syn(sport)
	p.TCP = map[string]any{"sport": sport, "dport": 80, "flags": "A", "seq": 2, "ack": 2}
	return p
}

func decode(t *testing.T, frame []byte) (netip.Addr, uint16, uint16) {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if ip == nil || tcp == nil {
		t.Fatalf("not TCP/IPv4: %x", frame)
	}
	a, _ := netip.AddrFromSlice(ip.DstIP)
	return a, uint16(tcp.SrcPort), uint16(tcp.DstPort)
}

func fixture(t *testing.T, config string) (*vectors.File, *testDatapath) {
	f, err := vectors.Find("fnat-tcp")
	if err != nil {
		t.Fatal(err)
	}
	f.Config = config
	cfg, err := f.ConfigModel()
	if err != nil {
		t.Fatal(err)
	}
	return f, setupXDP(t, f, cfg).(*testDatapath)
}

// applyLines applies ipvsadm lines on top of the datapath's configuration.
func (d *testDatapath) applyLines(t *testing.T, lines string) {
	t.Helper()
	ops, err := ipvsadmLines(lines)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := d.cfg.Do(ops)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.w.Do(func() error { return d.b.Apply(cfg) }); err != nil {
		t.Fatal(err)
	}
	d.cfg = cfg
}

func (d *testDatapath) send(t *testing.T, f *vectors.File, p vectors.Packet) (string, []byte) {
	t.Helper()
	frame, err := f.Build(p)
	if err != nil {
		t.Fatal(err)
	}
	v, out, err := d.Run(p.Iface, frame)
	if err != nil {
		t.Fatal(err)
	}
	return v, out
}

// The local port the datapath picks is the one flow/ derives from the flow
// hash: every node and backend translates a flow identically.
func TestLocalPortMatchesGo(t *testing.T) {
	f, d := fixture(t, `
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)
	for sport := 30000; sport < 30050; sport++ {
		v, out := d.send(t, f, syn(sport))
		if v != "redirect" {
			t.Fatalf("verdict %s", v)
		}
		_, lport, _ := decode(t, out)
		k := flow.Key{Src: netip.MustParseAddr("198.18.0.2"), Dst: netip.MustParseAddr("198.18.0.100"), SrcPort: uint16(sport), DstPort: 80, Proto: 6}
		_, want := flow.LocalCandidate(k.Hash(0), 0, 1, 1024, 65535)
		if lport != want {
			t.Fatalf("sport %d: datapath chose local port %d, Go derives %d", sport, lport, want)
		}
	}
}

// Reconfiguring (weights, adding and removing real servers, changing the
// scheduler) never moves an established connection; new ones follow the
// new tables.
func TestApplyKeepsConnections(t *testing.T) {
	f, d := fixture(t, `
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		-a -t 198.18.0.100:80 -r 198.18.1.3 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)
	where := map[int]netip.Addr{}
	for sport := 41000; sport < 41010; sport++ {
		_, out := d.send(t, f, syn(sport))
		where[sport], _, _ = decode(t, out)
	}
	for _, change := range []string{
		"-e -t 198.18.0.100:80 -r 198.18.1.3 -b -w 5",
		"-E -t 198.18.0.100:80 -s wrr",
		"-d -t 198.18.0.100:80 -r 198.18.1.2",
		"-a -t 198.18.0.100:80 -r 198.18.1.4 -b",
	} {
		ops, err := ipvsadmLines(change)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := d.cfg.Do(ops)
		if err != nil {
			t.Fatalf("%s: %v", change, err)
		}
		if err := d.w.Do(func() error { return d.b.Apply(cfg) }); err != nil {
			t.Fatalf("%s: %v", change, err)
		}
		d.cfg = cfg
		for sport, rs := range where {
			v, out := d.send(t, f, ack(sport))
			if got, _, _ := decode(t, out); v != "redirect" || got != rs {
				t.Fatalf("after %q: connection %d went to %s (%s), was %s", change, sport, got, v, rs)
			}
		}
	}
	// New connections: only .3 and .4 remain.
	for sport := 42000; sport < 42010; sport++ {
		_, out := d.send(t, f, syn(sport))
		if got, _, _ := decode(t, out); got == netip.MustParseAddr("198.18.1.2") {
			t.Fatalf("new connection scheduled to a deleted real server")
		}
	}
}

// Under the hash schedulers the datapath picks exactly the real server Go
// predicts from the same table and flow.SchedHash (ECMP peers and the DPDK
// backend depend on it); sh keeps a client on one real server.
func TestHashSchedulersMatchGo(t *testing.T) {
	for _, tc := range []struct {
		sched string
		pick  int
	}{{"mh", flow.PickFlow}, {"sh", flow.PickSource}, {"dh", flow.PickDest}} {
		t.Run(tc.sched, func(t *testing.T) {
			f, d := fixture(t, `
				-A -t 198.18.0.100:80 -s `+tc.sched+`
				-a -t 198.18.0.100:80 -r 198.18.1.2 -b -w 2
				-a -t 198.18.0.100:80 -r 198.18.1.3 -b -w 1
				-a -t 198.18.0.100:80 -r 198.18.1.4 -b -w 1
				--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)
			if fl := tableFlags(t, d); fl != svcFBytes|svcFNibbles {
				t.Fatalf("three real servers: want the nibble table, flags %#x", fl)
			}
			seen := picksMatchGo(t, f, d, tc.sched, tc.pick, 43000, 200)
			if tc.pick == flow.PickFlow && len(seen) != 3 {
				t.Fatalf("mh used %d of 3 real servers: %v", len(seen), seen)
			}
			if tc.pick != flow.PickFlow && len(seen) != 1 {
				t.Fatalf("%s spread one client over %v", tc.sched, seen)
			}
		})
	}
}

// lc and wlc spread a burst of new connections by what the datapath itself
// scheduled since the last sweep: wlc by weight (1:3), lc evenly.
func TestLeastConnections(t *testing.T) {
	for _, tc := range []struct {
		sched    string
		rs1, rs2 int
	}{{"wlc", 10, 30}, {"lc", 20, 20}} {
		t.Run(tc.sched, func(t *testing.T) {
			f, d := fixture(t, `
				-A -t 198.18.0.100:80 -s `+tc.sched+`
				-a -t 198.18.0.100:80 -r 198.18.1.2 -b -w 1
				-a -t 198.18.0.100:80 -r 198.18.1.3 -b -w 3
				--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)
			got := map[netip.Addr]int{}
			for sport := 44000; sport < 44040; sport++ {
				_, out := d.send(t, f, syn(sport))
				a, _, _ := decode(t, out)
				got[a]++
			}
			if got[netip.MustParseAddr("198.18.1.2")] != tc.rs1 || got[netip.MustParseAddr("198.18.1.3")] != tc.rs2 {
				t.Fatalf("%s split %v, want %d/%d", tc.sched, got, tc.rs1, tc.rs2)
			}
		})
	}
}

// Persistence (-p): a client stays on one real server for all its new
// connections; removing that real server reschedules it.
func TestPersistence(t *testing.T) {
	f, d := fixture(t, `
		-A -t 198.18.0.100:80 -s rr -p 60
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		-a -t 198.18.0.100:80 -r 198.18.1.3 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)
	_, out := d.send(t, f, syn(45000))
	first, _, _ := decode(t, out)
	for sport := 45001; sport < 45011; sport++ {
		_, out := d.send(t, f, syn(sport))
		if got, _, _ := decode(t, out); got != first {
			t.Fatalf("persistent client moved from %s to %s", first, got)
		}
	}
	// Another client is scheduled on its own (rr: the other real server).
	p := syn(45000)
	p.IP = map[string]any{"src": "198.18.0.3", "dst": "198.18.0.100"}
	_, out = d.send(t, f, p)
	if got, _, _ := decode(t, out); got == first {
		t.Fatalf("second client not scheduled afresh")
	}
	ops, _ := ipvsadmLines("-d -t 198.18.0.100:80 -r " + first.String())
	cfg, err := d.cfg.Do(ops)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.w.Do(func() error { return d.b.Apply(cfg) }); err != nil {
		t.Fatal(err)
	}
	_, out = d.send(t, f, syn(45100))
	if got, _, _ := decode(t, out); got == first {
		t.Fatalf("persistence kept a client on a deleted real server")
	}
}

// With --tunnel-src, each flow's outer source is an address of the prefix
// chosen by its hash (receivers' RSS spreads flows); without, the egress
// address.
func TestTunnelSourceSpreads(t *testing.T) {
	f, d := fixture(t, "-A -t 198.18.0.100:80 -s rr\n-a -t 198.18.0.100:80 -r 198.18.1.2 -i\n")
	outerSrc := func(p vectors.Packet) netip.Addr {
		v, out := d.send(t, f, p)
		if v != "redirect" {
			t.Fatalf("verdict %s", v)
		}
		pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip == nil || ip.Protocol != layers.IPProtocolIPv4 {
			t.Fatalf("not IP-in-IP: %x", out)
		}
		a, _ := netip.AddrFromSlice(ip.SrcIP)
		return a
	}
	if got := outerSrc(syn(1000)); got != netip.MustParseAddr("198.18.1.1") {
		t.Errorf("outer source %s, want the egress address 198.18.1.1", got)
	}
	d.b.opts.TunnelSrc = netip.MustParsePrefix("198.19.255.0/24")
	if err := d.b.writeConfig(); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for sport := 2000; sport < 2064; sport++ {
		a := outerSrc(syn(sport))
		if !d.b.opts.TunnelSrc.Contains(a) {
			t.Fatalf("outer source %s outside %s", a, d.b.opts.TunnelSrc)
		}
		// The flow's later packets keep it (the hash is the connection's).
		if later := outerSrc(ack(sport)); later != a {
			t.Fatalf("flow %d: outer source %s, then %s", sport, a, later)
		}
		seen[a] = true
	}
	if len(seen) < 32 {
		t.Errorf("64 flows used only %d outer sources", len(seen))
	}
}

// Removing a service frees exactly its scheduler table: a service added
// afterwards must not get table slots another service still uses. (Its
// release once counted slots as groups: removing the service at slot 4
// freed the group of the service at slot 16.)
func TestRemovedServiceFreesOnlyItsTable(t *testing.T) {
	svc := func(port int, reals ...string) string {
		s := fmt.Sprintf("-A -t 198.18.0.100:%d -s rr\n", port)
		for _, r := range reals {
			s += fmt.Sprintf("-a -t 198.18.0.100:%d -r %s -b\n", port, r)
		}
		return s + fmt.Sprintf("--add-laddr -z 198.18.1.200 -t 198.18.0.100:%d -F lan0\n", port)
	}
	f, d := fixture(t, svc(80, "198.18.1.2")+svc(81, "198.18.1.2", "198.18.1.3", "198.18.1.4", "198.18.1.5")+
		svc(83, "198.18.1.2")+svc(84, "198.18.1.2")+svc(85, "198.18.1.4"))
	apply := func(lines string) { t.Helper(); d.applyLines(t, lines) }
	apply(`-D -t 198.18.0.100:81`)
	apply(svc(86, "198.18.1.2") + svc(87, "198.18.1.2") + svc(88, "198.18.1.2"))
	for sport := 44000; sport < 44004; sport++ {
		p := syn(sport)
		p.TCP["dport"] = 85
		_, out := d.send(t, f, p)
		if got, _, _ := decode(t, out); got != netip.MustParseAddr("198.18.1.4") {
			t.Fatalf("a SYN to :85 went to %s: its table was given to another service", got)
		}
	}
}

// A Maglev service of 20 real servers gets a byte table (not the nibble
// one): the datapath's picks still match Go's table.
func TestByteTableMatchesGo(t *testing.T) {
	lines := "-A -t 198.18.0.100:80 -s mh\n--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0\n"
	for i := range 20 {
		lines += fmt.Sprintf("-a -t 198.18.0.100:80 -r 198.18.1.%d -b\n", 10+i)
	}
	f, d := fixture(t, lines)
	if fl := tableFlags(t, d); fl != svcFBytes {
		t.Fatalf("20 real servers: want a byte table, flags %#x", fl)
	}
	seen := picksMatchGo(t, f, d, "mh", flow.PickFlow, 45000, 300)
	if len(seen) < 15 {
		t.Errorf("300 flows reached %d of 20 real servers", len(seen))
	}
}

// tableFlags are the first service's byte-table flags in the datapath.
func tableFlags(t *testing.T, d *testDatapath) uint32 {
	t.Helper()
	var entry mbxSvc
	if err := d.b.objs.Services.Lookup(svcKey(d.cfg.Services[0].Key), &entry); err != nil {
		t.Fatal(err)
	}
	return entry.Flags & (svcFBytes | svcFNibbles)
}

// picksMatchGo sends n SYNs from successive source ports to the first
// service and checks each reaches the real server Go's table predicts; it
// returns how many went to each.
func picksMatchGo(t *testing.T, f *vectors.File, d *testDatapath, sched string, pick, sport, n int) map[netip.Addr]int {
	t.Helper()
	svc := d.cfg.Services[0]
	sch, _ := lbLookup(sched)
	table := sch.Table(svc.Reals, d.cfg.Maglev)
	seen := map[netip.Addr]int{}
	for p := sport; p < sport+n; p++ {
		_, out := d.send(t, f, syn(p))
		got, _, _ := decode(t, out)
		k := flow.Key{Src: netip.MustParseAddr("198.18.0.2"), Dst: netip.MustParseAddr("198.18.0.100"), SrcPort: uint16(p), DstPort: 80, Proto: 6}
		if want := svc.Reals[table[k.SchedHash(pick, 0)%uint32(len(table))]].Addr; got != want {
			t.Fatalf("sport %d: datapath picked %s, Go predicts %s", p, got, want)
		}
		seen[got]++
	}
	return seen
}

// packBytes: the real ids first (16-bit, little-endian, four per group),
// then an index per slot, half a byte each (low half first) up to 15 ids, a
// byte up to 255; more distinct ids do not fit.
func TestPackBytes(t *testing.T) {
	groups, n, ok := packBytes([]uint32{5, 300, 5, 7, 300})
	if !ok || n != 3 || len(groups) != 2 || byteGroups(3, 5) != 2 {
		t.Fatalf("ok %v, %d ids, %d groups", ok, n, len(groups))
	}
	if want := [8]uint8{5, 0, 44, 1, 7, 0, 0, 0}; groups[0].B != want {
		t.Errorf("id list %v, want %v", groups[0].B, want)
	}
	if want := [8]uint8{0x10, 0x20, 0x01, 0, 0, 0, 0, 0}; groups[1].B != want {
		t.Errorf("slots %#v, want %#v", groups[1].B, want)
	}
	big := make([]uint32, 256)
	for i := range big {
		big[i] = uint32(i + 1)
	}
	// 16 ids: a byte per slot, after four groups of ids.
	groups, n, ok = packBytes(append(big[:16:16], big[15], big[0]))
	if !ok || n != 16 || len(groups) != 4+3 || byteGroups(16, 18) != 7 {
		t.Fatalf("16 ids: ok %v, %d ids, %d groups", ok, n, len(groups))
	}
	if want := [8]uint8{15, 0, 0, 0, 0, 0, 0, 0}; groups[6].B != want {
		t.Errorf("slots 16-17 %v, want %v", groups[6].B, want)
	}
	if _, _, ok := packBytes(big); ok {
		t.Error("256 real servers packed into a byte table")
	}
	if _, _, ok := packBytes(big[:255]); !ok {
		t.Error("255 real servers did not fit a byte table")
	}
}

// The datapath's clock (clock.h's mbx_now, cached per CPU per jiffy) is
// CLOCK_MONOTONIC_COARSE, the clock Go's sweep compares with: an entry's
// last_seen is that clock at its last packet, at most a tick or two behind.
func TestClockIsTheCoarseClock(t *testing.T) {
	f, d := fixture(t, "-A -t 198.18.0.100:80 -s rr\n-a -t 198.18.0.100:80 -r 198.18.1.2 -g\n")
	const slack = 20 * uint64(time.Millisecond) // two ticks at HZ=100
	lastSeen := func() uint64 {
		var k mbxFlowKey
		var c mbxConn
		var seen uint64
		for it := d.b.objs.Conns.Iterate(); it.Next(&k, &c); {
			seen = max(seen, c.LastSeen)
		}
		return seen
	}
	check := func(p vectors.Packet) {
		t.Helper()
		before := monoNow()
		if v, _ := d.send(t, f, p); v != "redirect" {
			t.Fatalf("verdict %s", v)
		}
		after := monoNow()
		if got := lastSeen(); got+slack < before || got > after {
			t.Fatalf("last_seen %d, want within [%d-%d, %d]", got, before, slack, after)
		}
	}
	check(syn(3000))
	// Later packets, ticks later, carry the clock forward.
	for range 3 {
		time.Sleep(30 * time.Millisecond)
		check(ack(3000))
	}
}

// A SYN that reuses the client port of a connection to a real server that
// was since removed or quiesced is scheduled afresh (IPVS's conn_reuse_mode
// does the same for a destination of weight 0), whatever the old
// connection's state; to a real server still in service it follows its
// connection.
func TestReusedPortLeavesRemovedReal(t *testing.T) {
	f, d := fixture(t, `
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		-a -t 198.18.0.100:80 -r 198.18.1.3 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)
	at := map[int]netip.Addr{}
	for sport := 43000; sport < 43004; sport++ {
		_, out := d.send(t, f, syn(sport))
		at[sport], _, _ = decode(t, out)
	}
	// A retransmitted SYN follows its connection.
	for sport, rs := range at {
		if _, out := d.send(t, f, syn(sport)); func() netip.Addr { a, _, _ := decode(t, out); return a }() != rs {
			t.Fatalf("a repeated SYN of %d left %s", sport, rs)
		}
	}
	for _, tc := range []struct{ change, gone string }{
		{"-e -t 198.18.0.100:80 -r 198.18.1.3 -b -w 0", "198.18.1.3"},
		{"-d -t 198.18.0.100:80 -r 198.18.1.3", "198.18.1.3"},
	} {
		d.applyLines(t, tc.change)
		for sport := range at {
			v, out := d.send(t, f, syn(sport))
			if got, _, _ := decode(t, out); v != "redirect" || got.String() == tc.gone {
				t.Fatalf("after %q: a SYN reusing port %d went to %s (%s)", tc.change, sport, got, v)
			}
		}
	}
}

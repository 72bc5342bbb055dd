package datapath

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/mbx-net/mbx/backend/vectors"
)

// ndFrame builds a neighbour solicitation (or advertisement) from src for
// target, carrying the sender's link-layer address option.
func ndFrame(t *testing.T, na bool, srcMAC string, src, dst, target string) []byte {
	t.Helper()
	sm, _ := net.ParseMAC(srcMAC)
	eth := &layers.Ethernet{SrcMAC: sm, DstMAC: net.HardwareAddr{0x33, 0x33, 0xff, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	ic := &layers.ICMPv6{}
	_ = ic.SetNetworkLayerForChecksum(ip)
	var body gopacket.SerializableLayer
	if na {
		ic.TypeCode = layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborAdvertisement, 0)
		body = &layers.ICMPv6NeighborAdvertisement{Flags: 0x60, TargetAddress: net.ParseIP(target),
			Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptTargetAddress, Data: sm}}}
	} else {
		ic.TypeCode = layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)
		body = &layers.ICMPv6NeighborSolicitation{TargetAddress: net.ParseIP(target),
			Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: sm}}}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, ic, body); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fnat6Datapath is a datapath for the fnat6 vector file's topology with
// its services applied.
func fnat6Datapath(t *testing.T, opts Options) (*Datapath, map[string]int, *vectors.File) {
	t.Helper()
	f, err := vectors.Find("fnat6")
	if err != nil {
		t.Fatal(err)
	}
	d, idx, err := FromVectorFile(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := f.ConfigModel()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	d.Tick(time.Now())
	return d, idx, f
}

// Neighbour discovery on ports DPDK owns: solicitations for the port's
// address, a VIP and a LIP are answered; others pass; the solicitor is
// learnt; a missing next hop is solicited at its solicited-node address,
// and the advertisement lets the flow out.
func TestND(t *testing.T) {
	d, idx, f := fnat6Datapath(t, Options{ARP: true})
	d.neigh = map[netip.Addr]neighbor{}
	wan, lan := idx["wan0"], idx["lan0"]
	for _, c := range []struct {
		port           int
		sender, target string
		answer         bool
	}{{wan, "fd00:198::a:2", "fd00:198::a:100", true}, {wan, "fd00:198::a:2", "fd00:198::a:1", true},
		{lan, "fd00:198::b:2", "fd00:198::b:200", true}, {wan, "fd00:198::a:2", "fd00:198::a:77", false}} {
		fr := ndFrame(t, false, "02:00:00:00:0a:0b", c.sender, "ff02::1:ff00:1", c.target)
		v, out := d.Process(c.port, fr)
		if !c.answer {
			if v != Pass {
				t.Errorf("solicitation for %s: %s, want pass", c.target, v)
			}
			continue
		}
		p := gopacket.NewPacket(fr, layers.LayerTypeEthernet, gopacket.Default)
		na, ok := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
		ip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		if v != Tx || out != c.port || !ok || ip == nil || na.TargetAddress.String() != c.target ||
			ip.SrcIP.String() != c.target || ip.DstIP.String() != c.sender || len(na.Options) != 1 ||
			string(na.Options[0].Data) != string(d.macs[c.port][:]) || vectors.VerifyChecksums(fr) != nil {
			t.Errorf("solicitation for %s: %s out %d, answer % x", c.target, v, out, fr)
		}
	}
	if n, ok := d.neigh[netip.MustParseAddr("fd00:198::b:2")]; !ok || n.port != lan {
		t.Errorf("solicitor fd00:198::b:2 not learnt: %v", d.neigh)
	}
	// The real servers are unknown: a SYN is passed, rs1 solicited.
	delete(d.neigh, netip.MustParseAddr("fd00:198::b:2"))
	syn, err := f.Build(vectors.Packet{Iface: "wan0", Eth: map[string]any{"src": "client", "dst": "wan0"},
		IP:  map[string]any{"src": "fd00:198::a:2", "dst": "fd00:198::a:100"},
		TCP: map[string]any{"sport": 40000, "dport": 80, "flags": "S"}})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := d.Process(wan, append([]byte(nil), syn...)); v != Pass {
		t.Fatalf("SYN toward an unknown real server: %s, want pass", v)
	}
	buf := make([]byte, 128)
	n, port := d.Resolve(buf)
	p := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
	ns, ok := p.Layer(layers.LayerTypeICMPv6NeighborSolicitation).(*layers.ICMPv6NeighborSolicitation)
	ip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	if n != ndLen || port != lan || !ok || ns.TargetAddress.String() != "fd00:198::b:2" || ip == nil ||
		ip.DstIP.String() != "ff02::1:ff0b:2" || ip.SrcIP.String() != "fd00:198::b:1" ||
		string(buf[0:6]) != string([]byte{0x33, 0x33, 0xff, 0x0b, 0, 2}) || vectors.VerifyChecksums(buf[:n]) != nil {
		t.Fatalf("solicitation % x on port %d", buf[:n], port)
	}
	// rs1 advertises itself; the client's retransmitted SYN goes out.
	d.Process(lan, ndFrame(t, true, "02:00:00:00:02:02", "fd00:198::b:2", "fd00:198::b:1", "fd00:198::b:2"))
	if v, out := d.Process(wan, append([]byte(nil), syn...)); v != Redirect || out != lan {
		t.Fatalf("SYN after the advertisement: %s out %d", v, out)
	}
}

// An established IPv6 Full-NAT packet allocates nothing either.
func TestNoAllocationsIPv6(t *testing.T) {
	d, idx, f := fnat6Datapath(t, Options{})
	pkt := func(flags string) []byte {
		b, err := f.Build(vectors.Packet{Iface: "wan0", Eth: map[string]any{"src": "client", "dst": "wan0"},
			IP:  map[string]any{"src": "fd00:198::a:2", "dst": "fd00:198::a:100"},
			TCP: map[string]any{"sport": 40000, "dport": 80, "flags": flags}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if v, _ := d.Process(idx["wan0"], pkt("S")); v != Redirect {
		t.Fatalf("SYN: %s", v)
	}
	ack := pkt("A")
	buf := make([]byte, len(ack))
	if n := testing.AllocsPerRun(1000, func() {
		copy(buf, ack)
		d.Process(idx["wan0"], buf)
	}); n != 0 {
		t.Errorf("%.1f allocations per established IPv6 packet", n)
	}
}

// ping6 to a VIP is answered on the port it came in on.
func TestEchoReply6(t *testing.T) {
	d, idx, _ := fnat6Datapath(t, Options{ARP: true})
	cm, _ := net.ParseMAC("02:00:00:00:01:02")
	eth := &layers.Ethernet{SrcMAC: cm, DstMAC: d.macs[idx["wan0"]][:], EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: net.ParseIP("fd00:198::a:2"), DstIP: net.ParseIP("fd00:198::a:100")}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}
	_ = ic.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, ic, &layers.ICMPv6Echo{Identifier: 7, SeqNumber: 1}, gopacket.Payload("ping")); err != nil {
		t.Fatal(err)
	}
	fr := buf.Bytes()
	v, out := d.Process(idx["wan0"], fr)
	p := gopacket.NewPacket(fr, layers.LayerTypeEthernet, gopacket.Default)
	rip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	ric, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	if v != Tx || out != idx["wan0"] || rip == nil || ric == nil || ric.TypeCode.Type() != layers.ICMPv6TypeEchoReply ||
		rip.SrcIP.String() != "fd00:198::a:100" || rip.DstIP.String() != "fd00:198::a:2" || vectors.VerifyChecksums(fr) != nil {
		t.Fatalf("echo reply: %s out %d: % x", v, out, fr)
	}
}

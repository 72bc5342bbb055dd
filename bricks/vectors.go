package bricks

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"gopkg.in/yaml.v3"
)

// VectorFile is one brick datapath vector (testdata/bricks/*.yaml): the
// interfaces a test creates, a brick configuration, and packets in with the
// output(s) each must leave by. Every backend replays the same files.
type VectorFile struct {
	Name    string         `yaml:"name"`
	Doc     string         `yaml:"doc"`
	Ifaces  []string       `yaml:"ifaces"`
	Seed    uint32         `yaml:"seed"`
	Config  Model          `yaml:"config"`
	Packets []VectorPacket `yaml:"packets"`
	Path    string         `yaml:"-"`
}

// VectorPacket is a frame described by header fields, and its fate.
type VectorPacket struct {
	Name    string   `yaml:"name"`
	Iface   string   `yaml:"iface"`
	VLAN    []uint16 `yaml:"vlan"` // tags, outermost first (802.1ad then 802.1Q)
	Src     string   `yaml:"src"`  // IPv4 or IPv6 address; empty: an ARP frame
	Dst     string   `yaml:"dst"`
	Proto   string   `yaml:"proto"` // tcp, udp, icmp
	Sport   uint16   `yaml:"sport"`
	Dport   uint16   `yaml:"dport"`
	Frag    string   `yaml:"frag"`    // "", first, later
	HopOpts bool     `yaml:"hopopts"` // IPv6: a hop-by-hop header first
	Payload string   `yaml:"payload"`
	// Expected: the verdict, and the outputs (interface names) that send it.
	Verdict string   `yaml:"verdict"`
	Outputs []string `yaml:"outputs"`
	SameAs  string   `yaml:"same_as"` // the packet (e.g. the other direction) that must share its output
}

// VectorDir is where the vectors live, from a package directory in this
// repository.
func VectorDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "bricks")
}

// LoadVectors reads every vector file.
func LoadVectors() ([]*VectorFile, error) {
	paths, err := filepath.Glob(filepath.Join(VectorDir(), "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var out []*VectorFile
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		f := &VectorFile{Path: p}
		if err := yaml.Unmarshal(b, f); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no vectors in %s", VectorDir())
	}
	return out, nil
}

var (
	vecClientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	vecServerMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

// Frame builds the packet.
func (p VectorPacket) Frame() ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: vecClientMAC, DstMAC: vecServerMAC}
	ls := []gopacket.SerializableLayer{eth}
	etype := func(t layers.EthernetType) {
		if len(ls) == 1 {
			eth.EthernetType = t
		} else {
			ls[len(ls)-1].(*layers.Dot1Q).Type = t
		}
	}
	for i, v := range p.VLAN {
		t := layers.EthernetTypeDot1Q
		if i == 0 && len(p.VLAN) > 1 {
			t = layers.EthernetTypeQinQ
		}
		etype(t)
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: v})
	}
	if p.Src == "" {
		etype(layers.EthernetTypeARP)
		ls = append(ls, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: 1, SourceHwAddress: vecClientMAC,
			SourceProtAddress: []byte{198, 18, 0, 1}, DstHwAddress: make([]byte, 6), DstProtAddress: []byte{198, 18, 0, 2}})
		return serialize(ls, nil)
	}
	src, err := netip.ParseAddr(p.Src)
	if err != nil {
		return nil, fmt.Errorf("%s: src: %w", p.Name, err)
	}
	dst, err := netip.ParseAddr(p.Dst)
	if err != nil {
		return nil, fmt.Errorf("%s: dst: %w", p.Name, err)
	}
	var l4 gopacket.SerializableLayer
	var proto layers.IPProtocol
	switch p.Proto {
	case "tcp":
		proto = layers.IPProtocolTCP
		l4 = &layers.TCP{SrcPort: layers.TCPPort(p.Sport), DstPort: layers.TCPPort(p.Dport), ACK: true, Window: 512}
	case "udp":
		proto = layers.IPProtocolUDP
		l4 = &layers.UDP{SrcPort: layers.UDPPort(p.Sport), DstPort: layers.UDPPort(p.Dport)}
	case "icmp":
		if src.Is4() {
			proto = layers.IPProtocolICMPv4
			l4 = &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 1, Seq: 1}
		} else {
			proto = layers.IPProtocolICMPv6
			l4 = &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}
		}
	default:
		return nil, fmt.Errorf("%s: proto %q (tcp, udp, icmp)", p.Name, p.Proto)
	}
	var netl gopacket.NetworkLayer
	if src.Is4() {
		etype(layers.EthernetTypeIPv4)
		ip := &layers.IPv4{Version: 4, TTL: 64, Id: 7, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		switch p.Frag {
		case "first":
			ip.Flags = layers.IPv4MoreFragments
		case "later":
			ip.FragOffset = 185
		}
		ls = append(ls, ip)
		netl = ip
	} else {
		etype(layers.EthernetTypeIPv6)
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		ls = append(ls, ip)
		netl = ip
		if p.HopOpts {
			ip.NextHeader = layers.IPProtocolIPv6HopByHop
			ls = append(ls, gopacket.Payload{byte(proto), 0, 1, 4, 0, 0, 0, 0}) // PadN
		}
		if p.Frag != "" {
			ip.NextHeader = layers.IPProtocolIPv6Fragment
			off := uint16(0)
			if p.Frag == "later" {
				off = 185
			}
			more := uint16(0)
			if p.Frag == "first" {
				more = 1
			}
			fo := off<<3 | more
			ls = append(ls, gopacket.Payload{byte(proto), 0, byte(fo >> 8), byte(fo), 0, 0, 0, 9})
			if p.Frag == "later" {
				l4 = nil
			}
		}
	}
	if p.Frag == "later" && src.Is4() {
		l4 = nil
	}
	if l4 != nil {
		ls = append(ls, l4)
	}
	ls = append(ls, gopacket.Payload([]byte(p.Payload+"bricks vector payload")))
	return serialize(ls, netl)
}

func serialize(ls []gopacket.SerializableLayer, netl gopacket.NetworkLayer) ([]byte, error) {
	for _, l := range ls {
		switch x := l.(type) {
		case *layers.TCP:
			_ = x.SetNetworkLayerForChecksum(netl)
		case *layers.UDP:
			_ = x.SetNetworkLayerForChecksum(netl)
		case *layers.ICMPv6:
			_ = x.SetNetworkLayerForChecksum(netl)
		}
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...)
	return buf.Bytes(), err
}

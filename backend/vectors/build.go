package vectors

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// merge returns base with over's fields replacing base's, layer by layer.
func merge(base Packet, over *Packet) Packet {
	if over == nil {
		return base
	}
	if over.Replace {
		return *over
	}
	m := func(a, b map[string]any) map[string]any {
		if a == nil && b == nil {
			return nil
		}
		r := maps.Clone(a)
		if r == nil {
			r = map[string]any{}
		}
		maps.Copy(r, b)
		return r
	}
	out := base
	out.Iface = over.Iface
	out.Eth = m(base.Eth, over.Eth)
	out.ARP = m(base.ARP, over.ARP)
	out.Outer = m(base.Outer, over.Outer)
	out.IP = m(base.IP, over.IP)
	out.TCP = m(base.TCP, over.TCP)
	out.UDP = m(base.UDP, over.UDP)
	out.ICMP = m(base.ICMP, over.ICMP)
	if over.Payload != "" {
		out.Payload = over.Payload
	}
	if over.PayloadLen != 0 {
		out.PayloadLen = over.PayloadLen
	}
	if over.Quote != nil {
		out.Quote = over.Quote
	}
	out.Truncate, out.Patch, out.Raw = over.Truncate, over.Patch, over.Raw
	return out
}

func tcpFlags(t *layers.TCP, s string) error {
	for _, c := range strings.ToUpper(s) {
		switch c {
		case 'S':
			t.SYN = true
		case 'A':
			t.ACK = true
		case 'F':
			t.FIN = true
		case 'R':
			t.RST = true
		case 'P':
			t.PSH = true
		case 'U':
			t.URG = true
		case '.':
		default:
			return fmt.Errorf("unknown TCP flag %q", c)
		}
	}
	return nil
}

// build serializes p. Numeric fields may name $variables already bound.
func (f *File) build(p Packet, v vars) ([]byte, error) {
	if p.Raw != "" {
		return decodeHex(p.Raw)
	}
	var ls []gopacket.SerializableLayer
	num := func(m map[string]any, key string, def uint64) (uint64, error) {
		x, ok := m[key]
		if !ok {
			return def, nil
		}
		n, bound, err := v.num(x)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", key, err)
		}
		if !bound {
			return 0, fmt.Errorf("%s: variable %v is not bound yet", key, x)
		}
		return n, nil
	}
	eth := &layers.Ethernet{EthernetType: layers.EthernetTypeIPv4}
	for k, dst := range map[string]*net.HardwareAddr{"src": &eth.SrcMAC, "dst": &eth.DstMAC} {
		s, _ := p.Eth[k].(string)
		mac, err := f.macOf(s)
		if err != nil {
			return nil, fmt.Errorf("eth.%s: %w", k, err)
		}
		*dst = mac
	}
	ls = append(ls, eth)
	if p.Outer != nil {
		src, err := parseAddr(p.Outer["src"])
		if err != nil {
			return nil, fmt.Errorf("outer.src: %w", err)
		}
		dst, err := parseAddr(p.Outer["dst"])
		if err != nil {
			return nil, fmt.Errorf("outer.dst: %w", err)
		}
		ttl, _ := num(p.Outer, "ttl", 64)
		if src.Is6() { // ip6ip6: the flow label may be a $variable the output binds
			eth.EthernetType = layers.EthernetTypeIPv6
			label, err := num(p.Outer, "flow", 0)
			if err != nil {
				return nil, fmt.Errorf("outer.flow: %w", err)
			}
			ls = append(ls, &layers.IPv6{Version: 6, HopLimit: uint8(ttl), NextHeader: layers.IPProtocolIPv6,
				FlowLabel: uint32(label), SrcIP: src.AsSlice(), DstIP: dst.AsSlice()})
		} else {
			ls = append(ls, &layers.IPv4{Version: 4, TTL: uint8(ttl), Protocol: layers.IPProtocolIPv4,
				SrcIP: src.AsSlice(), DstIP: dst.AsSlice()})
		}
	}

	var netLayer gopacket.NetworkLayer
	switch {
	case p.ARP != nil:
		eth.EthernetType = layers.EthernetTypeARP
		op, _ := num(p.ARP, "op", 1)
		spa, err := parseAddr(p.ARP["spa"])
		if err != nil {
			return nil, fmt.Errorf("arp.spa: %w", err)
		}
		tpa, err := parseAddr(p.ARP["tpa"])
		if err != nil {
			return nil, fmt.Errorf("arp.tpa: %w", err)
		}
		ls = append(ls, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: uint16(op),
			SourceHwAddress: eth.SrcMAC, SourceProtAddress: spa.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: tpa.AsSlice()})
	case p.IP != nil:
		src, err := parseAddr(p.IP["src"])
		if err != nil {
			return nil, fmt.Errorf("ip.src: %w", err)
		}
		dst, err := parseAddr(p.IP["dst"])
		if err != nil {
			return nil, fmt.Errorf("ip.dst: %w", err)
		}
		ttl, _ := num(p.IP, "ttl", 64)
		if src.Is6() {
			ip6, fh, err := f.ipv6(p, src, dst, num)
			if err != nil {
				return nil, err
			}
			if p.Outer == nil {
				eth.EthernetType = layers.EthernetTypeIPv6
			}
			netLayer = ip6
			ls = append(ls, ip6)
			if fh != nil {
				ls = append(ls, fh)
			}
			break
		}
		id, _ := num(p.IP, "id", 1)
		tos, _ := num(p.IP, "tos", 0)
		frag, _ := num(p.IP, "frag", 0)
		mf, _ := num(p.IP, "mf", 0)
		ip := &layers.IPv4{Version: 4, TTL: uint8(ttl), Id: uint16(id), TOS: uint8(tos),
			Flags: layers.IPv4DontFragment, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), FragOffset: uint16(frag)}
		if df, ok := p.IP["df"]; frag != 0 || mf != 0 || (ok && df == 0) {
			ip.Flags = 0
		}
		if mf != 0 {
			ip.Flags = layers.IPv4MoreFragments
		}
		if o, ok := p.IP["options"].(string); ok {
			b, err := decodeHex(o)
			if err != nil || len(b) < 2 {
				return nil, fmt.Errorf("ip.options: bad hex %q", o)
			}
			ip.Options = []layers.IPv4Option{{OptionType: b[0], OptionLength: b[1], OptionData: b[2:]}}
		}
		if pr, ok := p.IP["proto"]; ok { // a later fragment has no transport layer
			n, _, _ := v.num(pr)
			ip.Protocol = layers.IPProtocol(n)
		}
		switch {
		case p.TCP != nil:
			ip.Protocol = layers.IPProtocolTCP
		case p.UDP != nil:
			ip.Protocol = layers.IPProtocolUDP
		case p.ICMP != nil:
			ip.Protocol = layers.IPProtocolICMPv4
		}
		netLayer = ip
		ls = append(ls, ip)
	}
	switch {
	case p.TCP != nil:
		sp, err := num(p.TCP, "sport", 0)
		if err != nil {
			return nil, err
		}
		dp, err := num(p.TCP, "dport", 0)
		if err != nil {
			return nil, err
		}
		seq, _ := num(p.TCP, "seq", 1000)
		ack, _ := num(p.TCP, "ack", 0)
		win, _ := num(p.TCP, "win", 65535)
		t := &layers.TCP{SrcPort: layers.TCPPort(sp), DstPort: layers.TCPPort(dp), Seq: uint32(seq), Ack: uint32(ack), Window: uint16(win)}
		fl, _ := p.TCP["flags"].(string)
		if err := tcpFlags(t, fl); err != nil {
			return nil, err
		}
		_ = t.SetNetworkLayerForChecksum(netLayer)
		ls = append(ls, t)
	case p.UDP != nil:
		sp, err := num(p.UDP, "sport", 0)
		if err != nil {
			return nil, err
		}
		dp, err := num(p.UDP, "dport", 0)
		if err != nil {
			return nil, err
		}
		u := &layers.UDP{SrcPort: layers.UDPPort(sp), DstPort: layers.UDPPort(dp)}
		_ = u.SetNetworkLayerForChecksum(netLayer)
		ls = append(ls, u)
	case p.ICMP != nil:
		typ, _ := num(p.ICMP, "type", 8)
		code, _ := num(p.ICMP, "code", 0)
		id, _ := num(p.ICMP, "id", 1)
		seq, _ := num(p.ICMP, "seq", 1)
		if mtu, ok := p.ICMP["mtu"]; ok { // frag needed: unused, next-hop MTU
			n, _, _ := v.num(mtu)
			id, seq = 0, n
		}
		if ip6, ok := netLayer.(*layers.IPv6); ok {
			// ICMPv6 errors: type, code, checksum, then 32 bits (the MTU of
			// "packet too big", else unused) before the quote.
			ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(uint8(typ), uint8(code))}
			_ = ic.SetNetworkLayerForChecksum(ip6)
			var word uint32
			if _, ok := p.ICMP["mtu"]; ok {
				word = uint32(seq)
			}
			ls = append(ls, ic, gopacket.Payload(binary.BigEndian.AppendUint32(nil, word)))
		} else {
			ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(uint8(typ), uint8(code)), Id: uint16(id), Seq: uint16(seq)})
		}
		if p.Quote != nil {
			q, err := f.build(*p.Quote, v)
			if err != nil {
				return nil, fmt.Errorf("quote: %w", err)
			}
			q = q[14:]
			if p.QuoteLen > 0 && p.QuoteLen < len(q) {
				q = q[:p.QuoteLen]
			}
			ls = append(ls, gopacket.Payload(q))
		}
	}
	if p.Payload != "" {
		ls = append(ls, gopacket.Payload(p.Payload))
	}
	if p.PayloadLen > 0 {
		ls = append(ls, gopacket.Payload(strings.Repeat("x", p.PayloadLen)))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	if p.UDP != nil && b[12] == 0x08 && b[13] == 0x00 {
		if nc, _ := p.UDP["nocsum"].(bool); nc {
			off := 14 + int(b[14]&0xf)*4 + 6
			b[off], b[off+1] = 0, 0
		}
	}
	for _, pt := range p.Patch {
		h, err := decodeHex(pt.Hex)
		if err != nil || pt.Off+len(h) > len(b) {
			return nil, fmt.Errorf("bad patch at %d", pt.Off)
		}
		copy(b[pt.Off:], h)
	}
	if p.Truncate > 0 && p.Truncate < len(b) {
		b = b[:p.Truncate]
	}
	return append([]byte(nil), b...), nil
}

// ipv6 builds an IPv6 header: ttl is the hop limit, tos the traffic class.
// With frag (offset in 8-byte units), mf or fid (identification) it is
// followed by a fragment header; a later fragment names its upper layer
// with proto.
func (f *File) ipv6(p Packet, src, dst netip.Addr, num func(map[string]any, string, uint64) (uint64, error)) (*layers.IPv6, *layers.IPv6Fragment, error) {
	if !dst.Is6() {
		return nil, nil, fmt.Errorf("ip: %s and %s are of different families", src, dst)
	}
	ttl, _ := num(p.IP, "ttl", 64)
	tos, _ := num(p.IP, "tos", 0)
	label, _ := num(p.IP, "flow", 0)
	ip6 := &layers.IPv6{Version: 6, HopLimit: uint8(ttl), TrafficClass: uint8(tos), FlowLabel: uint32(label),
		SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	switch {
	case p.TCP != nil:
		ip6.NextHeader = layers.IPProtocolTCP
	case p.UDP != nil:
		ip6.NextHeader = layers.IPProtocolUDP
	case p.ICMP != nil:
		ip6.NextHeader = layers.IPProtocolICMPv6
	case p.IP["proto"] != nil:
		pr, _ := num(p.IP, "proto", 0)
		ip6.NextHeader = layers.IPProtocol(pr)
	default:
		return nil, nil, fmt.Errorf("ip: IPv6 vectors carry TCP, UDP, ICMPv6 or a proto")
	}
	_, isFrag := p.IP["frag"]
	_, isMF := p.IP["mf"]
	_, isFid := p.IP["fid"]
	if !isFrag && !isMF && !isFid {
		return ip6, nil, nil
	}
	off, _ := num(p.IP, "frag", 0)
	mf, _ := num(p.IP, "mf", 0)
	fid, _ := num(p.IP, "fid", 0)
	fh := &layers.IPv6Fragment{NextHeader: ip6.NextHeader, FragmentOffset: uint16(off), MoreFragments: mf != 0, Identification: uint32(fid)}
	ip6.NextHeader = layers.IPProtocolIPv6Fragment
	return ip6, fh, nil
}

// bind learns unbound $variables of an expected packet's ports from the
// actual output (e.g. the Full-NAT local port the datapath chose).
func bind(p Packet, actual []byte, v vars) {
	pkt := gopacket.NewPacket(actual, layers.LayerTypeEthernet, gopacket.Default)
	set := func(m map[string]any, key string, val uint64) {
		if s, ok := m[key].(string); ok && strings.HasPrefix(s, "$") {
			if _, bound := v[s]; !bound {
				v[s] = val
			}
		}
	}
	if t, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && p.TCP != nil {
		set(p.TCP, "sport", uint64(t.SrcPort))
		set(p.TCP, "dport", uint64(t.DstPort))
	}
	if u, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && p.UDP != nil {
		set(p.UDP, "sport", uint64(u.SrcPort))
		set(p.UDP, "dport", uint64(u.DstPort))
	}
	if o, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok && p.Outer != nil && o.NextHeader == layers.IPProtocolIPv6 {
		set(p.Outer, "flow", uint64(o.FlowLabel))
	}
	if ic, ok := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok && p.ICMP != nil {
		set(p.ICMP, "id", uint64(ic.Id))
	}
	// gopacket leaves a first fragment's transport header undecoded.
	var first []byte
	if ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok && ip.FragOffset == 0 && ip.Flags&layers.IPv4MoreFragments != 0 {
		first = ip.Payload
	}
	if fh, ok := pkt.Layer(layers.LayerTypeIPv6Fragment).(*layers.IPv6Fragment); ok && fh.FragmentOffset == 0 {
		first = fh.Payload
	}
	if len(first) >= 4 {
		sp := uint64(first[0])<<8 | uint64(first[1])
		dp := uint64(first[2])<<8 | uint64(first[3])
		for _, m := range []map[string]any{p.TCP, p.UDP} {
			if m != nil {
				set(m, "sport", sp)
				set(m, "dport", dp)
			}
		}
	}
}

// Build serializes a packet description (no $variables) into a frame; for
// tests and benchmarks outside the replayer.
func (f *File) Build(p Packet) ([]byte, error) { return f.build(p, vars{}) }

// Find returns the vector file called name from dir.
func Find(name string) (*File, error) {
	dir, err := Dir()
	if err != nil {
		return nil, err
	}
	files, err := Load(dir)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if f.Name == name {
			return f, nil
		}
	}
	return nil, fmt.Errorf("no vector file named %q in %s", name, dir)
}

package datapath

import (
	"encoding/binary"
	"net/netip"

	"github.com/mbx-net/mbx/flow"
)

// NAT64 Full-NAT (bpf/nat6.h's translate_6to4 and translate_4to6): an IPv6
// service's connection to an IPv4 real server keeps both entries in
// conns6, the IPv4 side under v4-mapped addresses (::ffff:a.b.c.d). The
// checksum deltas need nothing more: the mapped form's 0xffff word is a
// one's-complement zero, so a delta between a v6 and a mapped tuple is the
// pseudo-header change of RFC 7915. Fragments are dropped (v6.go); ICMP
// across families is icmp6.go's.

// is4 reports whether a table address is an IPv4 one (mapped).
func is4(a [16]byte) bool { return netip.AddrFrom16(a).Is4In6() }

// to4 rewrites an IPv6 packet of a NAT64 connection as IPv4 in place: the
// Ethernet header moves 20 bytes toward the transport header, which stays.
func (d *Datapath) to4(frame []byte, p *pkt6, e *entry6) {
	ip := frame[14:]
	tos := ip[0]<<4 | ip[1]>>4
	ttl := ip[7]
	plen := p.ipLen - ip6Len
	d.rewriteL4(frame[p.l4Off:], p.k.proto, e.sport, e.dport, e.csumL4)
	d.off += ip6Len - 20
	d.n = 14 + 20 + plen
	f := d.buf[d.off : d.off+d.n]
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	o := f[14:34]
	o[0], o[1] = 0x45, tos
	binary.BigEndian.PutUint16(o[2:], uint16(20+plen))
	binary.BigEndian.PutUint32(o[4:], 0x4000) // id 0, DF
	o[8], o[9] = ttl, p.k.proto
	clear(o[10:12])
	copy(o[12:16], e.src[12:16])
	copy(o[16:20], e.dst[12:16])
	binary.BigEndian.PutUint16(o[10:], ^fold(sumWords(o)))
}

// rewriteL4 sets a TCP/UDP header's ports and applies the checksum delta.
func (d *Datapath) rewriteL4(l4 []byte, proto uint8, sport, dport uint16, delta uint32) {
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	if proto == 6 {
		csumApply(l4[16:18], delta)
		return
	}
	csumApply(l4[6:8], delta)
	if l4[6] == 0 && l4[7] == 0 {
		l4[6], l4[7] = 0xff, 0xff
	}
}

// reply64 takes an IPv4 packet that matched no IPv4 flow or service while
// a NAT64 service exists: a real server's reply is translated to IPv6 for
// its client; anything else is the kernel's.
func (d *Datapath) reply64(in int, frame []byte, p *flow.Packet) (Verdict, int) {
	k := key6{p.Key.Src.As16(), p.Key.Dst.As16(), p.Key.SrcPort, p.Key.DstPort, p.Key.Proto}
	e := d.conns6.get(k)
	if e == nil || !e.reply || is4(e.dst) || !d.alive6(e, k, d.now) {
		d.counters[cntPassNotOurs]++
		return Pass, 0
	}
	ip := frame[14:]
	if ip[0]&0xf != 5 || (p.Key.Proto == 17 && !p.UDPCsum) {
		// IPv4 options, or UDP without the checksum IPv6 requires: RFC
		// 7915 allows dropping either.
		d.counters[cntDropMalformed]++
		return Drop, 0
	}
	p6 := pkt6{k: k, tcpFlags: p.TCPFlags, ipLen: p.IPLen, l4Off: p.L4Off}
	if d.now-e.lastSeen > 1<<20 {
		e.lastSeen = d.now
	}
	d.track6(e, p6)
	st := e.svc.reals[e.real].stats
	st.OutPkts++
	st.OutBytes += uint64(p.IPLen)
	v, ok := d.hop6(e, false)
	if mtu := d.portMTU(e.nhPort); ok && p.IPLen+20 > mtu {
		// As IPv6 it grows by 20 bytes: "fragmentation needed" to the
		// real server when it forbade fragments, else dropped.
		if ip[6]&0x40 != 0 {
			return d.icmpTooBig(in, frame, mtu-20, [4]byte(ip[16:20]))
		}
		d.counters[cntDropTooBig]++
		return Drop, 0
	}
	if d.off < 20 {
		d.counters[cntDropFIB]++
		return Drop, 0
	}
	tos, ttl := ip[1], ip[8]
	plen := p.IPLen - 20
	d.rewriteL4(frame[p.L4Off:], p.Key.Proto, e.sport, e.dport, e.csumL4)
	d.off -= 20
	d.n = 14 + ip6Len + plen
	f := d.buf[d.off : d.off+d.n]
	binary.BigEndian.PutUint16(f[12:], etherTypeIPv6)
	o := f[14 : 14+ip6Len]
	binary.BigEndian.PutUint32(o[0:], 6<<28|uint32(tos)<<20)
	binary.BigEndian.PutUint16(o[4:], uint16(plen))
	o[6], o[7] = p.Key.Proto, ttl
	copy(o[8:24], e.src[:])
	copy(o[24:40], e.dst[:])
	if !ok {
		return v, 0
	}
	return d.emit6(in, f, e)
}

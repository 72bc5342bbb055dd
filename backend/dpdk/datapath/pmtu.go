package datapath

import "encoding/binary"

// defaultMTU is a port's MTU when none was given (Ethernet's).
const defaultMTU = 1500

func (d *Datapath) portMTU(port int) int {
	if m := d.ports[port].MTU; m > 0 {
		return m
	}
	return defaultMTU
}

// ownAddrTo is mbx's address toward a sender on port in: the port's own.
func (d *Datapath) ownAddrTo(in int) [4]byte {
	if a := d.ports[in].Addrs; len(a) > 0 {
		return a[0].As4()
	}
	return [4]byte{}
}

// icmpTooBig answers a packet that does not fit the egress with ICMP
// "fragmentation needed" (bpf/nat.h mbx_icmp_too_big): from from to the
// sender, quoting the packet's IP header and 8 bytes, back out of the
// port it came in on. The new headers go into the room before the packet's
// IP header (ProcessAt); without room, or with IP options, it is dropped.
func (d *Datapath) icmpTooBig(in int, frame []byte, mtu int, from [4]byte) (Verdict, int) {
	const hdrs, quote = 14 + 20 + 8, 20 + 8
	oip := frame[14:]
	if oip[0] != 0x45 || d.off < 28 || len(frame) < 14+quote {
		d.counters[cntDropTooBig]++
		return Drop, 0
	}
	var smac, dmac, to [4 + 2]byte
	copy(smac[:], frame[0:6]) // the packet's destination: us
	copy(dmac[:], frame[6:12])
	copy(to[:4], oip[12:16])
	d.off -= 28
	d.n = hdrs + quote
	f := d.buf[d.off : d.off+d.n]
	copy(f[0:6], dmac[:])
	copy(f[6:12], smac[:])
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[1] = 0x45, 0
	binary.BigEndian.PutUint16(ip[2:], 20+8+quote)
	clear(ip[4:8])
	ip[8], ip[9] = 64, 1
	clear(ip[10:12])
	copy(ip[12:16], from[:])
	copy(ip[16:20], to[:4])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sumWords(ip)))
	ic := f[34:]
	ic[0], ic[1] = 3, 4
	clear(ic[2:6])
	binary.BigEndian.PutUint16(ic[6:], uint16(mtu))
	binary.BigEndian.PutUint16(ic[2:], ^fold(sumWords(ic[:8+quote])))
	d.counters[cntICMPTooBig]++
	return Tx, in
}

package datapath

import (
	"encoding/binary"
	"net/netip"
)

// ICMP echo for mbx's own addresses (a port's, VIPs, LIPs): with ARP on
// (DPDK owns the port, the kernel never sees the request), the datapath
// answers in place, as DPVS does, so operators can ping a VIP.

// echoReply turns an ICMP echo request to a local address into its reply
// in place; false when the frame is not one.
func (d *Datapath) echoReply(in int, frame []byte) bool {
	if len(frame) < 14+20+8 {
		return false
	}
	ip := frame[14:]
	hlen := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[0]>>4 != 4 || hlen < 20 || tot < hlen+8 || tot > len(ip) || ip[9] != 1 ||
		binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return false
	}
	icmp := ip[hlen:tot]
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	if icmp[0] != 8 || icmp[1] != 0 || !(d.local[dst] || d.ownAddr(in, dst)) {
		return false
	}
	var a [4]byte
	copy(a[:], ip[12:16])
	copy(ip[12:16], ip[16:20])
	copy(ip[16:20], a[:])
	ip[8] = 64
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], ^fold(sumWords(ip[:hlen])))
	// Type 8 -> 0: the checksum grows by 8 << 8 (RFC 1624).
	icmp[0] = 0
	csumApply(icmp[2:4], csumAdd16(0, 0x0800, 0x0000))
	var mac [6]byte
	copy(mac[:], frame[6:12])
	copy(frame[0:6], mac[:])
	copy(frame[6:12], d.macs[in][:])
	return true
}

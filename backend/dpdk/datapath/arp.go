package datapath

import (
	"encoding/binary"
	"net/netip"
)

// ARP: DPDK owns the ports, so the kernel neither answers for mbx's
// addresses nor resolves its next hops; the datapath does both (DPVS does
// the same in its own stack). Requests for a local address (a port's own,
// a VIP, a LIP) are answered in place; every ARP packet from an on-link
// sender teaches its address; a next hop with no entry is asked for
// (Resolve hands the requests to the worker, which has buffers to send
// them from).

const (
	etherTypeARP = 0x0806
	arpLen       = 28
	resolveEvery = int64(100e6) // ns between requests for one address
)

// handleARP processes an ARP frame received on port in.
func (d *Datapath) handleARP(in int, frame []byte) (Verdict, int) {
	a := frame[14:]
	if len(a) < arpLen || binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != 0x0800 ||
		a[4] != 6 || a[5] != 4 {
		d.counters[cntPassNotOurs]++
		return Pass, 0
	}
	op := binary.BigEndian.Uint16(a[6:])
	spa := netip.AddrFrom4([4]byte(a[14:18]))
	tpa := netip.AddrFrom4([4]byte(a[24:28]))
	if d.onLink(in, spa) {
		d.learn(in, spa, [6]byte(a[8:14]))
	}
	if op != 1 || !(d.local[tpa] || d.ownAddr(in, tpa)) {
		d.counters[cntPassNotOurs]++
		return Pass, 0
	}
	// The reply, in place: target <- sender, sender <- us.
	copy(a[18:24], a[8:14])
	copy(a[24:28], a[14:18])
	copy(a[8:14], d.macs[in][:])
	v4 := tpa.As4()
	copy(a[14:18], v4[:])
	binary.BigEndian.PutUint16(a[6:], 2)
	copy(frame[0:6], a[18:24])
	copy(frame[6:12], d.macs[in][:])
	d.counters[cntTx]++
	return Tx, in
}

func (d *Datapath) onLink(port int, ip netip.Addr) bool {
	for _, pf := range d.ports[port].Prefixes {
		if pf.Contains(ip) {
			return true
		}
	}
	return false
}

func (d *Datapath) ownAddr(port int, ip netip.Addr) bool {
	for _, a := range d.ports[port].Addrs {
		if a == ip {
			return true
		}
	}
	return false
}

// wantNeighbor notes that ip, on port, has no neighbour entry.
func (d *Datapath) wantNeighbor(port int, ip netip.Addr) {
	if len(d.ports[port].Addrs) == 0 {
		return // nothing to ask from
	}
	k := resolveKey{port, ip}
	if last, ok := d.asked[k]; ok && d.now-last < resolveEvery {
		return
	}
	if len(d.resolve) == cap(d.resolve) {
		return // a full round of requests is pending already
	}
	d.asked[k] = d.now
	d.resolve = append(d.resolve, k)
}

type resolveKey struct {
	port int
	ip   netip.Addr
}

// Resolve writes an ARP request or an IPv6 neighbour solicitation into buf
// (at least ndLen bytes) for the next next hop the datapath is missing,
// returning its length and port; n is 0 when nothing is pending (or the
// port has no address of that family to ask from).
func (d *Datapath) Resolve(buf []byte) (n, port int) {
	if len(d.resolve) == 0 {
		return 0, 0
	}
	k := d.resolve[0]
	d.resolve = d.resolve[1:]
	if len(d.resolve) == 0 {
		d.resolve = d.resolveBuf[:0]
	}
	if k.ip.Is6() {
		return d.solicit(buf, k.port, k.ip), k.port
	}
	var src [4]byte
	for _, a := range d.ports[k.port].Addrs {
		if a.Is4() {
			src = a.As4()
			break
		}
	}
	for i := range 6 {
		buf[i] = 0xff
	}
	copy(buf[6:12], d.macs[k.port][:])
	binary.BigEndian.PutUint16(buf[12:], etherTypeARP)
	a := buf[14:42]
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], 0x0800)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1)
	copy(a[8:14], d.macs[k.port][:])
	copy(a[14:18], src[:])
	clear(a[18:24])
	dst := k.ip.As4()
	copy(a[24:28], dst[:])
	return 42, k.port
}

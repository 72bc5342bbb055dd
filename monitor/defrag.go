package monitor

import (
	"net/netip"
	"sort"
)

// fragKey names one IP datagram in flight.
type fragKey struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8
}

type fragPiece struct {
	off  int
	data []byte
}

type fragDatagram struct {
	pieces []fragPiece
	total  int // -1 until the last fragment is seen
	first  int64
}

// Defragmenter reassembles IPv4 and IPv6 fragments, as tshark and Zeek do
// before they look at TCP: a monitor must see the TCP header of a
// fragmented SYN. Overlapping fragments keep the first copy. Incomplete
// datagrams are dropped after Timeout of packet time. Hand-written because
// gopacket's ip4defrag works on its own decoded layers (an allocation per
// packet on the fast path) and has no IPv6.
type Defragmenter struct {
	Timeout  int64 // nanoseconds; 0: 30 s
	MaxBytes int   // per datagram; 0: 65535+
	// MaxDatagrams bounds the datagrams waiting for fragments; a fragment
	// of a new one beyond it is dropped. 0: no bound (a capture file).
	MaxDatagrams int
	pending      map[fragKey]*fragDatagram
	last         int64
}

// Add takes a fragment and returns true, with p rewritten as the whole
// datagram (TCP decoded), when it completes one.
func (d *Defragmenter) Add(p *Packet) bool {
	if d.pending == nil {
		d.pending = map[fragKey]*fragDatagram{}
	}
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 30e9
	}
	if p.Time-d.last > timeout/2 {
		d.last = p.Time
		for k, g := range d.pending {
			if p.Time-g.first > timeout {
				delete(d.pending, k)
			}
		}
	}
	k := fragKey{p.Src, p.Dst, p.FragID, p.Proto}
	g := d.pending[k]
	if g == nil {
		if d.MaxDatagrams > 0 && len(d.pending) >= d.MaxDatagrams {
			return false
		}
		g = &fragDatagram{total: -1, first: p.Time}
		d.pending[k] = g
	}
	limit := d.MaxBytes
	if limit == 0 {
		limit = 65535 + 8
	}
	end := p.FragOffset + len(p.L4)
	if end > limit {
		delete(d.pending, k)
		return false
	}
	if !p.FragMore {
		g.total = end
	}
	g.pieces = append(g.pieces, fragPiece{p.FragOffset, append([]byte(nil), p.L4...)})
	if g.total < 0 {
		return false
	}
	byOffset := append([]fragPiece(nil), g.pieces...)
	sort.Slice(byOffset, func(i, j int) bool { return byOffset[i].off < byOffset[j].off })
	have := 0
	for _, pc := range byOffset {
		if pc.off > have {
			return false // a hole
		}
		have = max(have, pc.off+len(pc.data))
	}
	if have < g.total {
		return false
	}
	buf := make([]byte, g.total)
	filled := make([]bool, g.total)
	// Arrival order decides overlaps: the first copy of a byte wins.
	for _, pc := range g.pieces {
		for i, c := range pc.data {
			if o := pc.off + i; o < g.total && !filled[o] {
				buf[o], filled[o] = c, true
			}
		}
	}
	delete(d.pending, k)
	p.Frag, p.FragOffset, p.FragMore = false, 0, false
	p.L4 = buf
	_ = decodeL4(p)
	return true
}

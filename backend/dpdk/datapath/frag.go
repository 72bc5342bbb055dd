package datapath

import (
	"encoding/binary"

	"github.com/mbx-net/mbx/flow"
)

// IPv4 fragments of load-balanced traffic follow their flow (bpf/frag.h):
// the first fragment has the ports and is scheduled and translated like
// any packet; its (addresses, IP id, protocol) is remembered with the
// ports. Later fragments find the ports there, then the connection, and
// get the same addresses (no transport header to rewrite). A later
// fragment before its first one is dropped: mbx does not reassemble.

type fragKey struct {
	src, dst [4]byte
	id       uint16
	proto    uint8
}

type fragPorts struct{ sport, dport uint16 }

// maxFrags bounds the remembered datagrams (the BPF LRU's size).
const maxFrags = 65536

func fragKeyOf(frame []byte, k flow.Key) fragKey {
	return fragKey{k.Src.As4(), k.Dst.As4(), binary.BigEndian.Uint16(frame[18:20]), k.Proto}
}

func (d *Datapath) rememberFrag(frame []byte, k flow.Key) {
	if len(d.frags) >= maxFrags {
		for old := range d.frags { // any one: a map has no LRU order
			delete(d.frags, old)
			break
		}
	}
	d.frags[fragKeyOf(frame, k)] = fragPorts{k.SrcPort, k.DstPort}
}

// laterFragment sends a later fragment with its datagram's connection.
func (d *Datapath) laterFragment(in int, frame []byte, p *flow.Packet) (Verdict, int) {
	fp, ok := d.frags[fragKeyOf(frame, p.Key)]
	if !ok {
		d.counters[cntDropFragment]++
		return Drop, 0
	}
	p.Key.SrcPort, p.Key.DstPort = fp.sport, fp.dport
	k := keyOf(p.Key)
	e := d.conns.get(k)
	if e == nil || !d.alive(e, k, d.now) {
		d.counters[cntDropFragment]++
		return Drop, 0
	}
	d.counters[cntFragment]++
	d.account(e, p.IPLen)
	return d.xmit(in, frame, p, e)
}

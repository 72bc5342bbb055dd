package xdp

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/mbx-net/mbx/monitor"
)

// Fragments on monitored interfaces reach Go whole (MON_REC_FRAGMENT):
// BPF cannot hold the pieces of a datagram, Go's Defragmenter can. When a
// datagram is complete, Go rebuilds it as one Ethernet frame and runs it
// through the same BPF tracker (mbx_monitor_reinject, BPF_PROG_TEST_RUN on
// the fragments' interface), so a fragmented flow's state lives in the same
// map entry as its other packets and its events come as records like the
// rest. Only fragments cost work in Go.

// maxReinject is the largest frame BPF_PROG_TEST_RUN takes for an XDP
// program without multi-buffer support (a page minus XDP headroom and
// skb_shared_info).
const maxReinject = 4096 - 256 - 320

// maxPendingDatagrams bounds the datagrams waiting for fragments.
const maxPendingDatagrams = 4096

// reassembler is a LiveMonitor's fragment path; used on the goroutine
// applying records.
type reassembler struct {
	prog    func() *ebpf.Program
	defrag  monitor.Defragmenter
	pkt     monitor.Packet
	frame   []byte // the last reinjected frame: the full copy for its record
	done    uint64 // datagrams reassembled and reinjected
	dropped uint64 // datagrams too large to reinject
}

// fragment takes one fragment record's frame; when it completes a
// datagram, the datagram is run through the tracker.
func (r *reassembler) fragment(frame []byte, ifindex uint32, now int64) error {
	r.pkt = monitor.Packet{Time: now}
	if err := monitor.Decode(monitor.LinkEthernet, frame, &r.pkt); err != nil || !r.pkt.Frag {
		return nil // BPF judged it a fragment; a broken one is dropped here
	}
	if !r.defrag.Add(&r.pkt) {
		return nil
	}
	out := reassembledFrame(&r.pkt)
	if len(out) > maxReinject {
		r.dropped++
		return nil
	}
	r.frame = out
	if _, _, err := TestRun(r.prog(), int(ifindex), out); err != nil {
		return fmt.Errorf("reinjecting a reassembled datagram: %w", err)
	}
	r.done++
	return nil
}

// reassembledFrame is p (a datagram the Defragmenter completed) as one
// frame: the last fragment's link header, its IP header without fragment
// fields (IPv4: options dropped; IPv6: extension headers dropped, the
// next header the datagram's protocol), and the whole payload.
func reassembledFrame(p *monitor.Packet) []byte {
	l2 := p.Frame[:p.L3]
	ip := p.Frame[p.L3:]
	var hdr []byte
	if p.IPv6 {
		hdr = append([]byte(nil), ip[:40]...)
		binary.BigEndian.PutUint16(hdr[4:], uint16(len(p.L4)))
		hdr[6] = p.Proto
	} else {
		hdr = append([]byte(nil), ip[:20]...)
		hdr[0] = 0x45
		binary.BigEndian.PutUint16(hdr[2:], uint16(20+len(p.L4)))
		binary.BigEndian.PutUint16(hdr[6:], 0) // no flags, offset 0
	}
	out := make([]byte, 0, len(l2)+len(hdr)+len(p.L4))
	out = append(out, l2...)
	out = append(out, hdr...)
	out = append(out, p.L4...)
	// Only TCP and UDP have checksums to fix; the tracker checks none.
	_ = monitor.FixChecksums(out)
	return out
}

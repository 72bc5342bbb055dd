package monitor

import (
	"bytes"
	"hash"
	"sort"
)

// stream reassembles the bytes one side sends, in sequence order. Bytes
// arriving twice keep the first copy (a differing second copy counts as an
// inconsistency: the mOS retransmission-inconsistency detector's signal).
type stream struct {
	started   bool
	synSeen   bool
	isn       uint32
	finSeen   bool
	finSeq    uint32
	nxt       uint32 // next in-order sequence number
	delivered uint64 // in-order bytes so far
	bufOn     bool
	buf       []byte // the last delivered bytes: at least BufferSize (window), at most twice
	ooo       []segment
	oooBytes  int
	hash      hash.Hash

	inconsistent uint64
	gapBytes     uint64 // bytes skipped over holes when the stream was flushed
}

type segment struct {
	seq  uint32
	data []byte
}

// Hole is a range of stream offsets not received, with later bytes held.
type Hole struct{ Offset, Len uint64 }

func (s *stream) start(seq uint32) {
	s.started, s.nxt = true, seq
}

// add takes a segment at seq; it reports whether any of it was sent before
// (a retransmission).
func (s *stream) add(m *Monitor, c *Conn, from Side, seq uint32, data []byte) bool {
	d := int32(seq - s.nxt)
	end := seq + uint32(len(data))
	if d > 0 {
		return s.hold(m, c, from, seq, data)
	}
	rexmit := d < 0
	if int32(end-s.nxt) <= 0 {
		s.compare(seq, data)
		return true
	}
	if d < 0 {
		s.compare(seq, data[:-d])
		data = data[-d:]
	}
	s.deliver(m, c, from, data)
	s.drain(m, c, from)
	return rexmit
}

// compare checks retransmitted bytes against the delivered copy still in
// the buffer.
func (s *stream) compare(seq uint32, data []byte) {
	back := uint64(s.nxt - seq) // bytes before nxt where data starts
	if back > uint64(len(s.buf)) || len(data) == 0 {
		return
	}
	old := s.buf[uint64(len(s.buf))-back:]
	n := min(len(old), len(data))
	if !bytes.Equal(old[:n], data[:n]) {
		s.inconsistent += uint64(diffBytes(old[:n], data[:n]))
	}
}

func diffBytes(a, b []byte) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// hold keeps an out-of-order segment until the hole before it fills.
func (s *stream) hold(m *Monitor, c *Conn, from Side, seq uint32, data []byte) bool {
	rexmit := false
	// Bytes already held keep their first copy: cut data to what is new.
	for _, h := range s.ooo {
		hs, he := h.seq, h.seq+uint32(len(h.data))
		ds, de := seq, seq+uint32(len(data))
		if int32(de-hs) <= 0 || int32(he-ds) <= 0 {
			continue
		}
		rexmit = true
		if int32(ds-hs) >= 0 && int32(he-de) >= 0 {
			if !bytes.Equal(h.data[ds-hs:de-hs], data) {
				s.inconsistent++
			}
			return true // wholly held already
		}
	}
	if s.oooBytes+len(data) > m.opts.BufferSize {
		m.raise(EvError, HookRecv, c, from.Other())
		return rexmit
	}
	s.ooo = append(s.ooo, segment{seq, append([]byte(nil), data...)})
	s.oooBytes += len(data)
	return rexmit
}

// drain delivers held segments that the stream has reached.
func (s *stream) drain(m *Monitor, c *Conn, from Side) {
	for len(s.ooo) > 0 {
		progressed := false
		for i := 0; i < len(s.ooo); i++ {
			h := s.ooo[i]
			if int32(h.seq-s.nxt) > 0 {
				continue
			}
			s.ooo = append(s.ooo[:i], s.ooo[i+1:]...)
			s.oooBytes -= len(h.data)
			i--
			end := h.seq + uint32(len(h.data))
			if int32(end-s.nxt) <= 0 {
				s.compare(h.seq, h.data)
				continue
			}
			skip := s.nxt - h.seq
			s.compare(h.seq, h.data[:skip])
			s.deliver(m, c, from, h.data[skip:])
			progressed = true
		}
		if !progressed {
			return
		}
	}
}

func (s *stream) deliver(m *Monitor, c *Conn, from Side, data []byte) {
	s.nxt += uint32(len(data))
	s.delivered += uint64(len(data))
	if s.hash != nil {
		s.hash.Write(data)
	}
	if s.bufOn {
		// The buffer grows to twice its size before the oldest half is
		// dropped: one copy per BufferSize bytes, not one per segment.
		if len(s.buf)+len(data) > 2*m.opts.BufferSize {
			keep := max(m.opts.BufferSize-len(data), 0)
			s.buf = append(s.buf[:0], s.buf[len(s.buf)-min(keep, len(s.buf)):]...)
		}
		s.buf = append(s.buf, data...)
	}
	m.raise(EvNewData, HookRecv, c, from.Other())
}

// flush delivers what is held past holes when the connection ends: the
// hole's bytes were never seen (a capture gap), the rest is real data.
func (s *stream) flush(m *Monitor, c *Conn, from Side) {
	for len(s.ooo) > 0 {
		sort.Slice(s.ooo, func(i, j int) bool { return int32(s.ooo[i].seq-s.ooo[j].seq) < 0 })
		gap := s.ooo[0].seq - s.nxt
		s.gapBytes += uint64(gap)
		s.nxt = s.ooo[0].seq
		s.drain(m, c, from)
	}
}

func (s *stream) holes() []Hole {
	if len(s.ooo) == 0 {
		return nil
	}
	segs := append([]segment(nil), s.ooo...)
	sort.Slice(segs, func(i, j int) bool { return int32(segs[i].seq-segs[j].seq) < 0 })
	var out []Hole
	at := s.nxt
	off := s.delivered
	for _, g := range segs {
		if d := int32(g.seq - at); d > 0 {
			out = append(out, Hole{off, uint64(d)})
			off += uint64(d)
			at = g.seq
		}
		if end := g.seq + uint32(len(g.data)); int32(end-at) > 0 {
			off += uint64(end - at)
			at = end
		}
	}
	return out
}

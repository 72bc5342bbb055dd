package monitor

import "net/netip"

// A Record is what a data-plane tracker (the BPF one, bpf/monitor.h)
// reports about one packet: the events it raised, in order, and the
// connection's counters after the packet. Apply turns records into the
// same handler calls the Go tracker makes, so handlers cannot tell which
// tracker ran.
type Record struct {
	ConnID    uint64 // 0: an orphan with no connection
	Time      int64  // Unix ns
	Start     int64  // the connection's first packet, Unix ns
	A, B      netip.AddrPort
	VLAN      [2]uint16
	NVLAN     int
	IPv6      bool
	FromB     bool // the packet was sent by B
	ClientIsB bool
	Midstream bool
	Flags     uint8
	Seq, Ack  uint32
	DataSeq   uint32 // the payload's first sequence number
	// Frame is the packet (nil when the tracker sent no copy); Payload is
	// its TCP payload.
	Frame, Payload []byte
	FrameLen       int
	Events         []RecordEvent
	EndReason      string
	States         [2]TCPState // after the packet
	Sides          [2]RecordSide
}

// RecordSide is one side's counters after the packet.
type RecordSide struct {
	Packets, Bytes, Delivered, Retransmissions uint64
}

// RecordEvent is one event of a record. EvData marks where the payload
// entered the sender's stream (Apply reassembles it there and raises
// EvNewData); State is the new state of a state change.
type RecordEvent struct {
	Event Event
	Hook  Hook
	Side  Side
	State TCPState
}

// EvData is RecordEvent's payload marker; it is never raised.
const EvData Event = 15

// Apply runs one record through the handlers: the live counterpart of
// Process when a data-plane tracker did the tracking. Connections are
// mirrored from records (roles, states, counters); with frames, the
// payload is reassembled here, so NEW_DATA, Peek and the stream hash work
// as offline.
func (m *Monitor) Apply(r *Record) {
	m.stats.Packets++
	m.advance(r.Time)
	m.fillPacket(r)
	if m.live == nil {
		m.live = map[uint64]*Conn{}
	}
	c := m.live[r.ConnID]
	ended := false
	synced := false
	for _, e := range r.Events {
		switch e.Event {
		case EvOrphan:
			m.stats.Orphans++
			m.raise(EvOrphan, HookRecv, nil, Client)
			continue
		case EvConnStart:
			if e.Hook == HookSend {
				c = m.liveConn(r, true)
				m.stats.Conns++
			}
		}
		if c == nil {
			c = m.liveConn(r, false)
		}
		if !synced {
			m.sync(c, r)
			synced = true
		}
		switch e.Event {
		case EvStateChange:
			c.Sides[e.Side].State = e.State
		case EvData:
			if r.Payload != nil {
				from := e.Side.Other()
				m.data(c, from, r.DataSeq, r.Payload)
			}
			continue
		case EvError:
			if r.Frame != nil {
				continue // the Go stream decides (it holds the bytes)
			}
		case EvConnEnd:
			if !ended {
				ended = true
				c.EndReason, c.End = r.EndReason, c.Last
				m.stats.Ended++
				for s := range c.Sides {
					c.Sides[s].send.flush(m, c, Side(s))
				}
			}
		}
		if e.Hook == HookRecv && raisedAtBoth(e.Event) {
			m.dispatch(e.Event, e.Hook, c, e.Side) // counted at the send hook
		} else {
			m.raise(e.Event, e.Hook, c, e.Side)
		}
	}
	if ended {
		delete(m.live, r.ConnID)
	}
}

// fillPacket makes m.pkt the record's packet: decoded from the frame, or
// its header fields.
func (m *Monitor) fillPacket(r *Record) {
	m.pkt.Time = r.Time
	if r.Frame != nil && Decode(LinkEthernet, r.Frame, &m.pkt) == nil && m.pkt.TCP {
		return
	}
	src, dst := r.A, r.B
	if r.FromB {
		src, dst = dst, src
	}
	m.pkt = Packet{Time: r.Time, Link: LinkEthernet, Frame: r.Frame, Src: src.Addr(), Dst: dst.Addr(),
		SrcPort: src.Port(), DstPort: dst.Port(), IPv6: r.IPv6, TCP: r.ConnID != 0,
		Flags: r.Flags, Seq: r.Seq, Ack: r.Ack, Payload: r.Payload, VLAN: r.VLAN, NVLAN: r.NVLAN}
	if r.ConnID != 0 {
		m.pkt.Proto = 6
	}
}

// liveConn mirrors a connection: at its start from the packet (the same
// role rules as the tracker's), or picked up later from the record.
func (m *Monitor) liveConn(r *Record, start bool) *Conn {
	c := m.newConn(&m.pkt, r.ConnID)
	c.Start = r.Start
	if !start {
		c.Client, c.Server = r.A, r.B
		if r.ClientIsB {
			c.Client, c.Server = r.B, r.A
		}
		c.Midstream = r.Midstream
		c.Sides[Client].State, c.Sides[Server].State = r.States[Client], r.States[Server]
	}
	m.live[r.ConnID] = c
	return c
}

// sync copies the record's counters into the mirrored connection.
func (m *Monitor) sync(c *Conn, r *Record) {
	c.Last = r.Time
	c.LastPacket = &m.pkt
	for s := range c.Sides {
		si := &c.Sides[s]
		si.Packets, si.Bytes, si.Retransmissions = r.Sides[s].Packets, r.Sides[s].Bytes, r.Sides[s].Retransmissions
		if r.Frame == nil {
			si.send.delivered = r.Sides[s].Delivered
		}
	}
	from := Client
	if r.FromB != r.ClientIsB {
		from = Server
	}
	c.Sides[from].Flags |= r.Flags
}

// Refresh updates the mirrored connection with src's id from src (a
// data-plane tracker's current view): states and counters move without
// records.
func (m *Monitor) Refresh(src *Conn) {
	c := m.live[src.ID]
	if c == nil {
		return
	}
	c.Last = max(c.Last, src.Last)
	for s := range c.Sides {
		d, o := &c.Sides[s], &src.Sides[s]
		d.State, d.Packets, d.Bytes, d.Retransmissions = o.State, o.Packets, o.Bytes, o.Retransmissions
		d.Flags |= o.Flags
		if !d.send.started {
			d.send.delivered = o.send.delivered
		}
	}
}

// LiveConn is the mirrored connection with id (nil if none).
func (m *Monitor) LiveConn(id uint64) *Conn { return m.live[id] }

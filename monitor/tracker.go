package monitor

import (
	"cmp"
	"crypto/sha256"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// Side is one endpoint of a connection: the client sent the first SYN.
type Side uint8

const (
	Client Side = 0
	Server Side = 1
)

// Other is the opposite side.
func (s Side) Other() Side { return 1 - s }

func (s Side) String() string {
	if s == Client {
		return "client"
	}
	return "server"
}

// TCPState is an endpoint's TCP state as mOS simulates it.
type TCPState uint8

const (
	StateClosed TCPState = iota
	StateListen
	StateSynSent
	StateSynRcvd
	StateEstablished
	StateFinWait1
	StateFinWait2
	StateClosing
	StateTimeWait
	StateCloseWait
	StateLastAck
)

var stateNames = [...]string{"CLOSED", "LISTEN", "SYN_SENT", "SYN_RCVD", "ESTABLISHED", "FIN_WAIT_1",
	"FIN_WAIT_2", "CLOSING", "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK"}

func (s TCPState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "UNKNOWN"
}

// End reasons.
const (
	EndFIN     = "fin"
	EndRST     = "rst"
	EndTimeout = "timeout"
	EndOpen    = "open" // still open when the input ended
)

// Options configure a Monitor.
type Options struct {
	// IdleTimeout ends a connection with no packets for this long (packet
	// time). 0: 5 minutes (Zeek's tcp_inactivity_timeout).
	IdleTimeout time.Duration
	// Linger keeps an ended connection so its late packets (a last ACK,
	// a retransmitted FIN) are counted with it, not as a new one. 0: 60 s.
	Linger time.Duration
	// BufferSize is each side's receive buffer: the delivered bytes Peek
	// can see, and the most out-of-order bytes held. 0: 256 KiB.
	BufferSize int
	// NoBuffer starts every side with its buffer off (bytes are still
	// counted and hashed, Peek sees nothing).
	NoBuffer bool
	// StreamHash keeps a SHA-256 of each reassembled stream.
	StreamHash bool
	// IgnoreVLAN keys connections on the 5-tuple only (tshark's view).
	// By default the VLAN tags are part of the key (Zeek's VLAN-aware key):
	// the same 5-tuple on two VLANs is two connections.
	IgnoreVLAN bool
	// Filter, when set, decides which connections are monitored: it sees
	// the packet that would create one (the first SYN, or the first packet
	// of a mid-stream pickup) and every orphan.
	Filter func(p *Packet) bool
}

// connKey is a connection's table key: the endpoints in a fixed order.
type connKey struct {
	a, b  netip.AddrPort
	vlan  [2]uint16
	nvlan int
}

// Stats are the monitor's own counters.
type Stats struct {
	Packets, TCP, Orphans, Malformed, Fragments, Filtered uint64
	Conns, Ended                                          uint64
	Reassembled                                           uint64 // datagrams completed from fragments
}

// Monitor tracks TCP connections from packets and raises events.
type Monitor struct {
	opts     Options
	conns    map[connKey]*Conn
	live     map[uint64]*Conn // mirrored from records (Apply), by id
	handlers map[handlerKey][]Handler
	children map[Event][]Event
	udes     []udeDef
	interest []bool
	trace    func(ev Event, hook Hook, c *Conn, side Side)
	defrag   Defragmenter
	pkt      Packet
	now      int64
	swept    int64
	nextID   uint64
	stats    Stats
	timers   []timer

	raised     [numBuiltin]atomic.Uint64 // events raised to handlers
	verdict    verdict                   // the packet being processed (inline.go)
	flowAction func(c *Conn, a FlowAction)
}

type timer struct {
	every, next int64
	fn          func(now time.Time)
}

// New makes a Monitor.
func New(opts Options) *Monitor {
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	if opts.Linger == 0 {
		opts.Linger = time.Minute
	}
	if opts.BufferSize == 0 {
		opts.BufferSize = 256 << 10
	}
	m := &Monitor{opts: opts, conns: map[connKey]*Conn{}, handlers: map[handlerKey][]Handler{}, children: map[Event][]Event{}}
	m.recomputeInterest()
	return m
}

// Trace calls fn for every event raised, handlers or not (mbx monitor
// --events).
func (m *Monitor) Trace(fn func(ev Event, hook Hook, c *Conn, side Side)) {
	m.trace = fn
	m.recomputeInterest()
	if fn != nil {
		for i := range m.interest {
			m.interest[i] = true
		}
	}
}

// Every calls fn every interval of packet time (offline) or wall time
// (live): mOS's timers.
func (m *Monitor) Every(interval time.Duration, fn func(now time.Time)) {
	m.timers = append(m.timers, timer{every: int64(interval), fn: fn})
}

// Wants reports whether a handler (or a trace) listens to ev, directly or
// through a user-defined event built on it.
func (m *Monitor) Wants(ev Event) bool { return int(ev) < len(m.interest) && m.interest[ev] }

// NeedsFrames reports whether handlers need the packets themselves, not
// only the events: new data, packets in, orphans, or stream hashes. A
// data-plane tracker then sends each recorded packet along.
func (m *Monitor) NeedsFrames() bool {
	return m.Wants(EvPktIn) || m.Wants(EvNewData) || m.Wants(EvOrphan) || m.opts.StreamHash
}

// Packet is the packet being processed (valid during a handler).
func (m *Monitor) Packet() *Packet { return &m.pkt }

// Stats returns the monitor's counters.
func (m *Monitor) Stats() Stats { return m.stats }

// Conns calls fn for every connection in the table (open or lingering),
// and every mirrored one (Apply).
func (m *Monitor) Conns(fn func(c *Conn)) {
	for _, c := range m.conns {
		fn(c)
	}
	for _, c := range m.live {
		fn(c)
	}
}

// Process decodes one frame of link type lt captured at time t and runs it
// through the tracker. A frame that cannot be decoded is an orphan,
// counted as malformed.
func (m *Monitor) Process(lt LinkType, frame []byte, t time.Time) {
	m.pkt.Time = t.UnixNano()
	err := Decode(lt, frame, &m.pkt)
	m.ProcessDecoded(&m.pkt, err)
}

// ProcessDecoded runs an already decoded packet (err from Decode).
func (m *Monitor) ProcessDecoded(p *Packet, err error) {
	if p != &m.pkt {
		m.pkt = *p
		p = &m.pkt
	}
	m.stats.Packets++
	m.verdict = verdict{}
	m.advance(p.Time)
	if err != nil {
		m.stats.Malformed++
		m.orphan(p)
		return
	}
	if p.Frag {
		m.stats.Fragments++
		if !m.defrag.Add(p) {
			return // held until the datagram is whole
		}
		m.stats.Reassembled++
	}
	if !p.TCP {
		m.orphan(p)
		return
	}
	m.stats.TCP++
	m.tcp(p)
}

func (m *Monitor) orphan(p *Packet) {
	if m.opts.Filter != nil && !m.opts.Filter(p) {
		m.stats.Filtered++
		return
	}
	m.stats.Orphans++
	m.raise(EvOrphan, HookRecv, nil, Client)
}

// advance moves the clock: timers and the idle sweep run on packet time.
func (m *Monitor) advance(now int64) {
	if now < m.now {
		return // capture timestamps going backwards: keep the clock
	}
	m.now = now
	for i := range m.timers {
		t := &m.timers[i]
		if t.next == 0 {
			t.next = now + t.every
		}
		for now >= t.next {
			t.fn(time.Unix(0, t.next))
			t.next += t.every
		}
	}
	if now-m.swept >= int64(time.Second) {
		m.swept = now
		m.sweep(now)
	}
}

func (m *Monitor) sweep(now int64) {
	idle, linger := int64(m.opts.IdleTimeout), int64(m.opts.Linger)
	for k, c := range m.conns {
		switch {
		case c.EndReason == "" && now-c.Last > idle:
			m.end(c, EndTimeout, Client)
			if now-c.Last > linger {
				delete(m.conns, k)
			}
		case c.EndReason != "" && now-c.End > linger:
			delete(m.conns, k)
		}
	}
}

// Close ends every open connection (reason "open": the input ended) and
// raises their EvConnEnd.
func (m *Monitor) Close() {
	var open []*Conn
	for _, c := range m.conns {
		if c.EndReason == "" {
			open = append(open, c)
		}
	}
	for id, c := range m.live {
		open = append(open, c)
		delete(m.live, id)
	}
	slices.SortFunc(open, func(a, b *Conn) int { return cmp.Compare(a.ID, b.ID) })
	for _, c := range open {
		m.end(c, EndOpen, Client)
	}
}

func (m *Monitor) key(p *Packet) connKey {
	a := netip.AddrPortFrom(p.Src, p.SrcPort)
	b := netip.AddrPortFrom(p.Dst, p.DstPort)
	if b.Compare(a) < 0 {
		a, b = b, a
	}
	k := connKey{a: a, b: b}
	if !m.opts.IgnoreVLAN {
		k.vlan, k.nvlan = p.VLAN, p.NVLAN
	}
	return k
}

func (m *Monitor) tcp(p *Packet) {
	k := m.key(p)
	c := m.conns[k]
	syn := p.Flags&(FlagSYN|FlagACK) == FlagSYN
	if c != nil && c.EndReason != "" && syn && !c.isSynRexmit(p) {
		// A new SYN on an ended connection: the port is reused.
		delete(m.conns, k)
		c = nil
	}
	if c == nil {
		if m.opts.Filter != nil && !m.opts.Filter(p) {
			m.stats.Filtered++
			return
		}
		m.nextID++
		c = m.newConn(p, m.nextID)
		m.conns[k] = c
		m.stats.Conns++
		c.LastPacket = p
		m.raiseBoth(EvConnStart, c, c.sideOf(p))
	}
	c.LastPacket = p
	if c.dropped {
		m.verdict.drop = true
	}
	if c.EndReason != "" {
		// Late packets of an ended connection are counted with it, and are
		// out of flow for handlers.
		s := c.sideOf(p)
		c.Sides[s].Packets++
		c.Sides[s].Bytes += uint64(len(p.Frame))
		c.Last = p.Time
		m.raise(EvOrphan, HookRecv, nil, Client)
		return
	}
	m.segment(c, p)
}

func (m *Monitor) newConn(p *Packet, id uint64) *Conn {
	c := &Conn{ID: id, Start: p.Time, Last: p.Time, m: m}
	src, dst := netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort)
	switch p.Flags & (FlagSYN | FlagACK | FlagRST) {
	case FlagSYN:
		c.Client, c.Server = src, dst
		c.Sides[Client].State, c.Sides[Server].State = StateClosed, StateListen
	case FlagSYN | FlagACK:
		// The SYN was missed or comes later: the SYN-ACK's receiver is the
		// client.
		c.Client, c.Server = dst, src
		c.Sides[Client].State, c.Sides[Server].State = StateSynSent, StateListen
	default:
		// Mid-stream pickup: the first sender is the client (tshark's
		// node 0); both sides are taken as established.
		c.Client, c.Server = src, dst
		c.Sides[Client].State, c.Sides[Server].State = StateEstablished, StateEstablished
		c.Midstream = true
	}
	if p.NVLAN > 0 {
		c.VLAN = append([]uint16(nil), p.VLAN[:p.NVLAN]...)
	}
	c.IPv6 = p.IPv6
	for s := range c.Sides {
		st := &c.Sides[s].send
		st.bufOn = !m.opts.NoBuffer
		if m.opts.StreamHash {
			st.hash = sha256.New()
		}
	}
	return c
}

// segment is one TCP packet of a live connection: the sender's stack, then
// the receiver's, then the payload.
func (m *Monitor) segment(c *Conn, p *Packet) {
	from := c.sideOf(p)
	to := from.Other()
	snd, rcv := &c.Sides[from], &c.Sides[to]
	snd.Packets++
	snd.Bytes += uint64(len(p.Frame))
	snd.Flags |= p.Flags
	c.Last = p.Time
	m.raiseBoth(EvPktIn, c, from)

	rexmit := false
	st := &snd.send
	f := p.Flags
	if f&FlagSYN != 0 {
		if st.synSeen && st.isn == p.Seq {
			rexmit = true
		}
		st.synSeen, st.isn = true, p.Seq
		if !st.started {
			st.start(p.Seq + 1)
		}
	}

	// The sender's own stack.
	switch {
	case f&FlagRST != 0:
		m.setState(c, from, StateClosed, HookSend)
	case f&(FlagSYN|FlagACK) == FlagSYN:
		if snd.State == StateClosed || snd.State == StateListen {
			m.setState(c, from, StateSynSent, HookSend)
		}
	case f&(FlagSYN|FlagACK) == FlagSYN|FlagACK:
		if snd.State == StateListen || snd.State == StateClosed || snd.State == StateSynSent {
			m.setState(c, from, StateSynRcvd, HookSend)
		}
	}

	// Payload and FIN occupy sequence space.
	dataRexmit := false
	if len(p.Payload) > 0 {
		seq := p.Seq
		if f&FlagSYN != 0 {
			seq++
		}
		dataRexmit = m.data(c, from, seq, p.Payload)
	}
	if f&FlagFIN != 0 && f&FlagRST == 0 {
		fin := p.Seq + uint32(len(p.Payload))
		if f&FlagSYN != 0 {
			fin++
		}
		if st.finSeen && st.finSeq == fin && len(p.Payload) == 0 {
			rexmit = true
		}
		st.finSeen, st.finSeq = true, fin
		switch snd.State {
		case StateCloseWait:
			m.setState(c, from, StateLastAck, HookSend)
		case StateFinWait1, StateFinWait2, StateClosing, StateTimeWait, StateLastAck, StateClosed:
		default:
			m.setState(c, from, StateFinWait1, HookSend)
		}
	}
	if rexmit || dataRexmit {
		snd.Retransmissions++
		m.raiseBoth(EvRexmit, c, from)
	}

	// The receiver's stack.
	if f&FlagRST != 0 {
		m.setState(c, to, StateClosed, HookRecv)
		m.end(c, EndRST, from)
		return
	}
	if f&(FlagSYN|FlagACK) == FlagSYN {
		if rcv.State == StateListen || rcv.State == StateClosed {
			m.setState(c, to, StateSynRcvd, HookRecv)
		}
	}
	if f&(FlagSYN|FlagACK) == FlagSYN|FlagACK && rcv.State == StateSynSent {
		m.setState(c, to, StateEstablished, HookRecv)
	}
	if f&FlagACK != 0 {
		rs := &rcv.send
		if rcv.State == StateSynRcvd && rs.synSeen && seqGE(p.Ack, rs.isn+1) && f&FlagSYN == 0 {
			m.setState(c, to, StateEstablished, HookRecv)
		}
		if rs.finSeen && seqGE(p.Ack, rs.finSeq+1) {
			switch rcv.State {
			case StateFinWait1:
				if f&FlagFIN != 0 {
					m.setState(c, to, StateTimeWait, HookRecv)
				} else {
					m.setState(c, to, StateFinWait2, HookRecv)
				}
			case StateClosing:
				m.setState(c, to, StateTimeWait, HookRecv)
			case StateLastAck:
				m.setState(c, to, StateClosed, HookRecv)
			}
		}
	}
	if f&FlagFIN != 0 {
		switch rcv.State {
		case StateEstablished, StateSynRcvd, StateSynSent:
			m.setState(c, to, StateCloseWait, HookRecv)
		case StateFinWait1:
			m.setState(c, to, StateClosing, HookRecv)
		case StateFinWait2:
			m.setState(c, to, StateTimeWait, HookRecv)
		}
	}
	if done(c.Sides[Client].State) && done(c.Sides[Server].State) {
		m.end(c, EndFIN, from)
	}
}

// done: the side has nothing more to say (its FIN was acknowledged, or it
// closed).
func done(s TCPState) bool { return s == StateTimeWait || s == StateClosed }

func (m *Monitor) setState(c *Conn, side Side, s TCPState, hook Hook) {
	if c.Sides[side].State == s {
		return
	}
	c.Sides[side].State = s
	m.raise(EvStateChange, hook, c, side)
}

func (m *Monitor) end(c *Conn, reason string, from Side) {
	if c.EndReason != "" {
		return
	}
	c.EndReason, c.End = reason, c.Last
	m.stats.Ended++
	for s := range c.Sides {
		c.Sides[s].send.flush(m, c, Side(s))
	}
	m.raiseBoth(EvConnEnd, c, from)
}

// data hands a segment's payload to the sender's stream; it reports a
// retransmission.
func (m *Monitor) data(c *Conn, from Side, seq uint32, payload []byte) bool {
	st := &c.Sides[from].send
	if !st.started {
		st.start(seq)
	}
	return st.add(m, c, from, seq, payload)
}

func seqGE(a, b uint32) bool { return int32(a-b) >= 0 }

// Conn is one tracked TCP connection.
type Conn struct {
	ID             uint64
	Client, Server netip.AddrPort
	VLAN           []uint16
	IPv6           bool
	Midstream      bool  // picked up without its handshake
	Start, Last    int64 // Unix nanoseconds
	End            int64
	EndReason      string // "" while open
	Sides          [2]SideInfo
	LastPacket     *Packet
	UserData       any

	stopped [2]bool
	dropped bool
	m       *Monitor
}

// SideInfo is one endpoint's state and counters; send is the byte stream
// it sends (which the other side receives).
type SideInfo struct {
	State           TCPState
	Packets, Bytes  uint64 // sent by this side (Bytes: captured frame bytes)
	Retransmissions uint64 // sent by this side
	Flags           uint8  // every TCP flag this side has sent
	send            stream
}

func (c *Conn) sideOf(p *Packet) Side {
	if p.SrcPort == c.Client.Port() && p.Src == c.Client.Addr() {
		return Client
	}
	return Server
}

func (c *Conn) isSynRexmit(p *Packet) bool {
	st := &c.Sides[c.sideOf(p)].send
	return st.synSeen && st.isn == p.Seq
}

// StreamBytes is how many in-order bytes side has sent (retransmitted
// bytes counted once).
func (c *Conn) StreamBytes(sender Side) uint64 { return c.Sides[sender].send.delivered }

// SetStreamBytes sets how many in-order bytes sender has sent: for
// connections a data-plane tracker reports (it counts, Go does not see the
// bytes).
func (c *Conn) SetStreamBytes(sender Side, n uint64) { c.Sides[sender].send.delivered = n }

// StreamSHA256 is the SHA-256 of the bytes side sent so far (Options.
// StreamHash), nil without it.
func (c *Conn) StreamSHA256(sender Side) []byte {
	if h := c.Sides[sender].send.hash; h != nil {
		return h.Sum(nil)
	}
	return nil
}

// Peek returns the buffered bytes side has received (mOS's receive buffer
// of that side) and the stream offset of the first of them.
func (c *Conn) Peek(side Side) ([]byte, uint64) {
	st := &c.Sides[side.Other()].send
	b := st.buf
	if n := c.m.opts.BufferSize; len(b) > n {
		b = b[len(b)-n:]
	}
	return b, st.delivered - uint64(len(b))
}

// Holes returns the gaps in the bytes side has received: out-of-order data
// is held after them (mOS's fragment info). Offsets are stream offsets.
func (c *Conn) Holes(side Side) []Hole { return c.Sides[side.Other()].send.holes() }

// Inconsistencies counts retransmitted bytes that differed from the first
// copy in what side received.
func (c *Conn) Inconsistencies(side Side) uint64 { return c.Sides[side.Other()].send.inconsistent }

// StopMonitoring stops events for side; with both sides stopped the
// connection raises nothing more, and an inline data plane forwards the
// rest of it without Go (FlowBypass).
func (c *Conn) StopMonitoring(side Side) {
	if c.stopped[side] {
		return
	}
	c.stopped[side] = true
	if c.stopped[side.Other()] && c.EndReason == "" {
		c.m.flow(c, FlowBypass)
	}
}

// SetBuffer turns side's receive buffer on or off; off drops what it holds.
func (c *Conn) SetBuffer(side Side, on bool) {
	st := &c.Sides[side.Other()].send
	st.bufOn = on
	if !on {
		st.buf = nil
	}
}

package monitor

import "time"

// Inline mode (mOS's forward = 1 with a nic_forward_table): the monitor
// sits between two interfaces and every packet it sees is forwarded after
// its handlers ran, unless one of them dropped it. Handlers decide per
// packet (DropPacket, ReplacePacket) and per connection (Conn.Drop, and
// StopMonitoring on both sides, which hands the connection back to the data
// plane's fast path). A passive monitor (offline, or a tap) keeps the
// decisions but nothing acts on them.

// EndDropped is the end reason of a connection a handler dropped.
const EndDropped = "drop"

// FlowAction is what an inline data plane does with a connection's later
// packets, as decided by a handler.
type FlowAction uint8

const (
	// FlowDrop: drop them without asking Go (Conn.Drop).
	FlowDrop FlowAction = iota + 1
	// FlowBypass: forward them without Go: both sides stopped monitoring.
	FlowBypass
)

func (a FlowAction) String() string {
	switch a {
	case FlowDrop:
		return "drop"
	case FlowBypass:
		return "bypass"
	}
	return "none"
}

// verdict is the packet being processed's fate.
type verdict struct {
	drop bool
	out  []byte // replacement frame
}

// DropPacket drops the packet being processed (inline mode): it is not
// forwarded. The tracker has already seen it.
func (m *Monitor) DropPacket() { m.verdict.drop = true }

// ReplacePacket forwards frame instead of the packet being processed
// (inline mode). Modifying Packet().Frame in place works too when the
// length stays; either way the handler keeps the checksums right
// (FixChecksums).
func (m *Monitor) ReplacePacket(frame []byte) { m.verdict.out = frame }

// PacketVerdict is what the handlers decided for the last packet
// processed: drop it, or forward out (the packet itself unless replaced).
func (m *Monitor) PacketVerdict() (drop bool, out []byte) {
	if m.verdict.drop {
		return true, nil
	}
	if m.verdict.out != nil {
		return false, m.verdict.out
	}
	return false, m.pkt.Frame
}

// OnFlowAction sets the data plane's callback for handlers' per-connection
// decisions (an inline backend programs its fast path from it). It runs on
// the monitor's goroutine, at most once per connection and action.
func (m *Monitor) OnFlowAction(fn func(c *Conn, a FlowAction)) { m.flowAction = fn }

func (m *Monitor) flow(c *Conn, a FlowAction) {
	if m.flowAction != nil {
		m.flowAction(c, a)
	}
}

// Drop drops the packet being processed and every later packet of the
// connection, both ways, and ends it (reason "drop", EvConnEnd raised): an
// inline firewall's block. Packets already on their way to Go are dropped
// here; the data plane drops the rest. A new connection on the same ports
// (a SYN with a new sequence number) is judged afresh.
func (c *Conn) Drop() {
	m := c.m
	m.verdict.drop = true
	if c.dropped {
		return
	}
	c.dropped = true
	m.flow(c, FlowDrop)
	m.end(c, EndDropped, Client)
}

// Dropped reports whether a handler dropped the connection.
func (c *Conn) Dropped() bool { return c.dropped }

// Tick moves a live monitor's clock to now without a packet: timers and
// the idle sweep run (an inline data plane calls it when traffic pauses).
func (m *Monitor) Tick(now time.Time) { m.advance(now.UnixNano()) }

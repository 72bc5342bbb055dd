package monitor

import "fmt"

// Event is one of mOS's built-in events or a user-defined one.
type Event uint16

// The built-in events, with mOS's meaning.
const (
	EvPktIn       Event = iota + 1 // an in-flow TCP packet
	EvConnStart                    // a connection's first packet (its SYN, or mid-stream pickup)
	EvRexmit                       // a retransmission (full or partial overlap, SYN or FIN again)
	EvStateChange                  // one side's TCP state changed (raised at that side's hook)
	EvConnEnd                      // the connection ended: FIN handshake, RST, timeout, or end of input
	EvNewData                      // new in-order bytes in a side's receive stream
	EvOrphan                       // an out-of-flow or non-TCP packet (Conn is nil)
	EvError                        // e.g. a side's buffer is full: a segment was not kept
	numBuiltin
)

var eventNames = [...]string{"", "PKT_IN", "CONN_START", "REXMIT", "STATE_CHANGE", "CONN_END", "NEW_DATA", "ORPHAN", "ERROR"}

func (e Event) String() string {
	if e > 0 && e < numBuiltin {
		return eventNames[e]
	}
	return fmt.Sprintf("UDE_%d", e)
}

// Hook is where an event is raised, as in mOS: HookSend while the sending
// side's stack is simulated, HookRecv while the receiving side's is. The
// side a handler gets is that side.
type Hook uint8

const (
	HookSend Hook = iota
	HookRecv
)

func (h Hook) String() string {
	if h == HookSend {
		return "send"
	}
	return "recv"
}

// EventCounts returns how many times each built-in event was raised to
// handlers (index: Event). Safe from any goroutine (metrics).
func (m *Monitor) EventCounts() map[Event]uint64 {
	out := map[Event]uint64{}
	for ev := EvPktIn; ev < numBuiltin; ev++ {
		out[ev] = m.raised[ev].Load()
	}
	return out
}

// Handler is a callback for an event. c is nil for EvOrphan (the packet is
// Monitor.Packet()).
type Handler func(c *Conn, side Side, ev Event)

// FilterFunc decides whether a user-defined event fires when its base
// event does.
type FilterFunc func(c *Conn, side Side) bool

type udeDef struct {
	base   Event
	filter FilterFunc
}

// DefineEvent makes a user-defined event: raised, at the same hook and
// side, whenever base is raised and filter returns true. It may itself be
// the base of further events (mOS's event forest).
func (m *Monitor) DefineEvent(base Event, filter FilterFunc) Event {
	ev := numBuiltin + Event(len(m.udes))
	m.udes = append(m.udes, udeDef{base, filter})
	m.children[base] = append(m.children[base], ev)
	m.recomputeInterest()
	return ev
}

// On registers h for ev at hook.
func (m *Monitor) On(ev Event, hook Hook, h Handler) {
	k := handlerKey{ev, hook}
	m.handlers[k] = append(m.handlers[k], h)
	m.recomputeInterest()
}

type handlerKey struct {
	ev   Event
	hook Hook
}

// recomputeInterest marks the events someone listens to, directly or
// through a user-defined event built on them, so raising the others costs
// one slice index.
func (m *Monitor) recomputeInterest() {
	n := int(numBuiltin) + len(m.udes)
	m.interest = make([]bool, n)
	var wants func(ev Event) bool
	wants = func(ev Event) bool {
		if len(m.handlers[handlerKey{ev, HookSend}])+len(m.handlers[handlerKey{ev, HookRecv}]) > 0 {
			return true
		}
		for _, c := range m.children[ev] {
			if wants(c) {
				return true
			}
		}
		return false
	}
	for ev := Event(1); int(ev) < n; ev++ {
		m.interest[ev] = wants(ev)
	}
}

// raise runs ev's handlers at hook, then the user-defined events built on
// it whose filter passes.
func (m *Monitor) raise(ev Event, hook Hook, c *Conn, side Side) {
	if m.interest[ev] && ev < numBuiltin && (c == nil || !c.stopped[side]) {
		m.raised[ev].Add(1)
	}
	m.dispatch(ev, hook, c, side)
}

// dispatch runs ev's handlers at hook (raise without counting).
func (m *Monitor) dispatch(ev Event, hook Hook, c *Conn, side Side) {
	if !m.interest[ev] {
		return
	}
	if c != nil && c.stopped[side] {
		return
	}
	if m.trace != nil {
		m.trace(ev, hook, c, side)
	}
	for _, h := range m.handlers[handlerKey{ev, hook}] {
		h(c, side, ev)
	}
	for _, child := range m.children[ev] {
		if m.interest[child] && m.udes[child-numBuiltin].filter(c, side) {
			m.dispatch(child, hook, c, side)
		}
	}
}

// raisedAtBoth: events raised at the sender's and the receiver's hooks.
func raisedAtBoth(ev Event) bool {
	return ev == EvPktIn || ev == EvConnStart || ev == EvRexmit || ev == EvConnEnd
}

// raiseBoth raises ev (counted once) at the sender's send hook and the
// receiver's receive hook.
func (m *Monitor) raiseBoth(ev Event, c *Conn, sender Side) {
	if !c.stopped[sender] {
		m.raise(ev, HookSend, c, sender)
	} else {
		m.raise(ev, HookRecv, c, sender.Other())
		return
	}
	m.dispatch(ev, HookRecv, c, sender.Other())
}

package flow

import (
	"fmt"
	"strings"
	"time"
)

// State is a connection's state as IPVS names it (from the director's
// point of view). Numbers are shared with bpf/consts.h.
type State uint8

const (
	StateNone State = iota
	StateEstablished
	StateSynSent
	StateSynRecv
	StateFinWait
	StateTimeWait
	StateClose
	StateCloseWait
	StateLastAck
	StateListen
	StateSynAck
	numTCPStates

	// StateUDP is the pseudo-state of UDP entries; it only selects a timeout.
	StateUDP State = 15
)

// NumStates is the size of the state dimension of FSM and Timeouts.
const NumStates = 16

var stateNames = [NumStates]string{
	StateNone: "NONE", StateEstablished: "ESTABLISHED", StateSynSent: "SYN_SENT",
	StateSynRecv: "SYN_RECV", StateFinWait: "FIN_WAIT", StateTimeWait: "TIME_WAIT",
	StateClose: "CLOSE", StateCloseWait: "CLOSE_WAIT", StateLastAck: "LAST_ACK",
	StateListen: "LISTEN", StateSynAck: "SYNACK", StateUDP: "UDP",
}

func (s State) String() string {
	if int(s) < NumStates && stateNames[s] != "" {
		return stateNames[s]
	}
	return fmt.Sprintf("STATE(%d)", uint8(s))
}

// Direction of a packet relative to the connection.
type Direction uint8

const (
	DirInput  Direction = 0 // client -> virtual service
	DirOutput Direction = 1 // real server -> client
)

// Event is the TCP flag class that drives a transition.
type Event int8

const (
	EventNone Event = -1
	EventSYN  Event = 0
	EventFIN  Event = 1
	EventACK  Event = 2
	EventRST  Event = 3
)

// TCP flag bits as in the TCP header's flags byte.
const (
	FlagFIN = 0x01
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagACK = 0x10
)

// EventOf classifies TCP flags with IPVS's priority: rst > syn > fin > ack.
func EventOf(flags uint8) Event {
	switch {
	case flags&FlagRST != 0:
		return EventRST
	case flags&FlagSYN != 0:
		return EventSYN
	case flags&FlagFIN != 0:
		return EventFIN
	case flags&FlagACK != 0:
		return EventACK
	}
	return EventNone
}

// FSM is the transition table indexed [direction][event][state].
type FSM [2][4][NumStates]State

// IPVSFSM returns IPVS's "normal" TCP state table (net/netfilter/ipvs/
// ip_vs_proto_tcp.c, INPUT and OUTPUT parts). States past SYNACK map to
// themselves so the table is total.
func IPVSFSM() FSM {
	const (
		sNO = StateNone
		sES = StateEstablished
		sSS = StateSynSent
		sSR = StateSynRecv
		sFW = StateFinWait
		sTW = StateTimeWait
		sCL = StateClose
		sCW = StateCloseWait
		sLA = StateLastAck
		sLI = StateListen
		sSA = StateSynAck
	)
	rows := [2][4][numTCPStates]State{
		DirInput: {
			//        sNO, sES, sSS, sSR, sFW, sTW, sCL, sCW, sLA, sLI, sSA
			EventSYN: {sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR},
			EventFIN: {sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW},
			EventACK: {sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES},
			EventRST: {sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR},
		},
		DirOutput: {
			EventSYN: {sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR},
			EventFIN: {sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW},
			EventACK: {sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES},
			EventRST: {sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL},
		},
	}
	var f FSM
	for d := range f {
		for e := range f[d] {
			for s := range f[d][e] {
				if s < int(numTCPStates) {
					f[d][e][s] = rows[d][e][s]
				} else {
					f[d][e][s] = State(s)
				}
			}
		}
	}
	return f
}

// Next returns the state after a packet with the given TCP flags.
func (f *FSM) Next(dir Direction, flags uint8, s State) State {
	ev := EventOf(flags)
	if ev == EventNone {
		return s
	}
	return f[dir&1][ev][s%NumStates]
}

// Timeouts is how long an idle connection lives in each state.
type Timeouts [NumStates]time.Duration

// IPVSTimeouts returns IPVS's default timeouts (tcp 900s established, udp 300s).
func IPVSTimeouts() Timeouts {
	var t Timeouts
	for i := range t {
		t[i] = 2 * time.Second
	}
	t[StateNone] = 2 * time.Second
	t[StateEstablished] = 15 * time.Minute
	t[StateSynSent] = 2 * time.Minute
	t[StateSynRecv] = time.Minute
	t[StateFinWait] = 2 * time.Minute
	t[StateTimeWait] = 2 * time.Minute
	t[StateClose] = 10 * time.Second
	t[StateCloseWait] = time.Minute
	t[StateLastAck] = 30 * time.Second
	t[StateListen] = 2 * time.Minute
	t[StateSynAck] = 2 * time.Minute
	t[StateUDP] = 5 * time.Minute
	return t
}

// ParseState parses a state name as printed by String (case-insensitive).
func ParseState(name string) (State, error) {
	for i, n := range stateNames {
		if n != "" && strings.EqualFold(n, name) {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("unknown connection state %q", name)
}

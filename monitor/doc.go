// Package monitor is mbx's TCP stream monitor, mOS's programming model in
// Go. A Monitor keys TCP connections (VLAN tags and the 4-tuple), simulates
// both endpoints' TCP states from the packets each sends and receives,
// detects retransmissions, reassembles both byte streams, and raises
// events to handlers:
//
//	m := monitor.New(monitor.Options{})
//	m.On(monitor.EvConnEnd, monitor.HookSend, func(c *monitor.Conn, side monitor.Side, ev monitor.Event) {
//		fmt.Println(c.Client, c.Server, c.EndReason)
//	})
//	err := monitor.ReadFile("trace.pcap", m)
//
// The built-in events are mOS's eight (PKT_IN, CONN_START, REXMIT,
// STATE_CHANGE, CONN_END, NEW_DATA, ORPHAN, ERROR) plus timers (Every).
// DefineEvent builds user-defined events on any event, including other
// user-defined ones. Handlers run at a hook: HookSend while the sending
// side is simulated, HookRecv while the receiving side is.
//
// Input: ReadFile/Read (pcap and pcapng, offline) or Process (one frame at
// a time). The semantics, and where they differ from tshark and Zeek, are
// in docs/monitor.md. midstat (package midstat) is built on this API.
package monitor

package monitor

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// seg builds an Ethernet/IPv4/TCP frame.
func seg(src, dst string, sport, dport uint16, seq, ack uint32, flags uint8, payload string) []byte {
	b := make([]byte, 14+20+20+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+len(payload)))
	ip[8], ip[9] = 64, 6
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12], tcp[13] = 5<<4, flags
	copy(tcp[20:], payload)
	return b
}

const (
	cli = "198.18.0.1"
	srv = "198.18.1.1"
)

// c2s and s2c are segments of one connection, client port 40000 to 80.
func c2s(seq, ack uint32, flags uint8, payload string) []byte {
	return seg(cli, srv, 40000, 80, seq, ack, flags, payload)
}
func s2c(seq, ack uint32, flags uint8, payload string) []byte {
	return seg(srv, cli, 80, 40000, seq, ack, flags, payload)
}

const (
	syn    = FlagSYN
	synack = FlagSYN | FlagACK
	ack    = FlagACK
	finack = FlagFIN | FlagACK
	rst    = FlagRST
	psh    = FlagPSH | FlagACK
)

// replay runs frames through a monitor, logging events as
// "EVENT hook side CLIENT/SERVER".
func replay(t *testing.T, m *Monitor, frames ...[]byte) []string {
	t.Helper()
	var log []string
	m.Trace(func(ev Event, hook Hook, c *Conn, side Side) {
		if ev == EvPktIn || ev == EvNewData {
			return
		}
		s := ev.String() + " " + hook.String() + " " + side.String()
		if c != nil {
			s += " " + c.Sides[Client].State.String() + "/" + c.Sides[Server].State.String()
		}
		log = append(log, s)
	})
	at := time.Unix(1000, 0)
	for i, f := range frames {
		m.Process(LinkEthernet, f, at.Add(time.Duration(i)*time.Millisecond))
	}
	return log
}

func TestHandshakeAndClose(t *testing.T) {
	m := New(Options{StreamHash: true})
	log := replay(t, m,
		c2s(100, 0, syn, ""),
		s2c(500, 101, synack, ""),
		c2s(101, 501, ack, ""),
		c2s(101, 501, psh, "GET /"),
		s2c(501, 106, psh, "200 OK"),
		c2s(106, 507, finack, ""),
		s2c(507, 107, finack, ""),
		c2s(107, 508, ack, ""),
	)
	want := []string{
		"CONN_START send client CLOSED/LISTEN",
		"CONN_START recv server CLOSED/LISTEN",
		"STATE_CHANGE send client SYN_SENT/LISTEN",
		"STATE_CHANGE recv server SYN_SENT/SYN_RCVD",
		"STATE_CHANGE recv client ESTABLISHED/SYN_RCVD",
		"STATE_CHANGE recv server ESTABLISHED/ESTABLISHED",
		"STATE_CHANGE send client FIN_WAIT_1/ESTABLISHED",
		"STATE_CHANGE recv server FIN_WAIT_1/CLOSE_WAIT",
		"STATE_CHANGE send server FIN_WAIT_1/LAST_ACK",
		"STATE_CHANGE recv client TIME_WAIT/LAST_ACK",
		"STATE_CHANGE recv server TIME_WAIT/CLOSED",
		"CONN_END send client TIME_WAIT/CLOSED",
		"CONN_END recv server TIME_WAIT/CLOSED",
	}
	if !slices.Equal(log, want) {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(log, "\n"), strings.Join(want, "\n"))
	}
	var c *Conn
	m.Conns(func(x *Conn) { c = x })
	if c.EndReason != EndFIN || c.StreamBytes(Client) != 5 || c.StreamBytes(Server) != 6 {
		t.Errorf("end %q, bytes %d/%d", c.EndReason, c.StreamBytes(Client), c.StreamBytes(Server))
	}
}

// Retransmissions: a full copy, a partial overlap, out-of-order data, and
// an inconsistent copy (the first copy is kept).
func TestRetransmissionAndReassembly(t *testing.T) {
	m := New(Options{})
	var rexmits int
	var inconsistent []uint64
	// The mOS slides' retransmission-inconsistency detector, as a
	// user-defined event on REXMIT.
	fake := m.DefineEvent(EvRexmit, func(c *Conn, side Side) bool { return c.Inconsistencies(side) > 0 })
	m.On(EvRexmit, HookRecv, func(*Conn, Side, Event) { rexmits++ })
	m.On(fake, HookRecv, func(c *Conn, side Side, _ Event) { inconsistent = append(inconsistent, c.Inconsistencies(side)) })
	replay(t, m,
		c2s(100, 0, syn, ""),
		s2c(500, 101, synack, ""),
		c2s(101, 501, ack, ""),
		c2s(101, 501, psh, "GOOD"),  // 101-104
		c2s(101, 501, psh, "GOOD"),  // full retransmission, same bytes
		c2s(109, 501, psh, "LATER"), // 109-113: out of order
		c2s(105, 501, psh, "ABCD"),  // 105-108 fills the hole
		c2s(103, 501, psh, "ODAB"),  // 103-106: partial overlap, same bytes
		c2s(102, 501, psh, "XXX"),   // 102-104: differs from "OOD"
		c2s(114, 501, psh, "END"),   // in order
	)
	var c *Conn
	m.Conns(func(x *Conn) { c = x })
	buf, off := c.Peek(Server)
	if string(buf) != "GOODABCDLATEREND" || off != 0 {
		t.Errorf("server received %q at %d", buf, off)
	}
	if rexmits != 3 || c.Sides[Client].Retransmissions != 3 {
		t.Errorf("%d REXMIT events, %d counted; want 3", rexmits, c.Sides[Client].Retransmissions)
	}
	if !slices.Equal(inconsistent, []uint64{3}) {
		t.Errorf("inconsistency events %v, want one with 3 bytes", inconsistent)
	}
}

// A hole: Holes reports it while later data waits; at the end the held
// data is delivered past the hole.
func TestHoles(t *testing.T) {
	m := New(Options{})
	replay(t, m,
		c2s(100, 0, syn, ""),
		s2c(500, 101, synack, ""),
		c2s(101, 501, psh, "AB"),
		c2s(105, 501, psh, "EF"),
	)
	var c *Conn
	m.Conns(func(x *Conn) { c = x })
	if h := c.Holes(Server); len(h) != 1 || h[0] != (Hole{2, 2}) {
		t.Errorf("holes %v, want [{2 2}]", h)
	}
	m.Close()
	if c.StreamBytes(Client) != 4 || c.EndReason != EndOpen {
		t.Errorf("after close: %d bytes, end %q", c.StreamBytes(Client), c.EndReason)
	}
}

// Roles: a SYN-ACK first makes its receiver the client; a mid-stream
// packet makes its sender the client, both sides established.
func TestRoles(t *testing.T) {
	m := New(Options{})
	replay(t, m, s2c(500, 101, synack, ""), c2s(100, 0, syn, ""), c2s(101, 501, ack, ""))
	m.Conns(func(c *Conn) {
		if c.Client.Addr().String() != cli || c.Sides[Client].State != StateEstablished || c.Sides[Server].State != StateEstablished {
			t.Errorf("reordered handshake: client %s, states %s/%s", c.Client, c.Sides[Client].State, c.Sides[Server].State)
		}
	})
	m = New(Options{})
	replay(t, m, s2c(500, 101, psh, "data"))
	m.Conns(func(c *Conn) {
		if c.Client.Addr().String() != srv || !c.Midstream || c.Sides[Server].State != StateEstablished {
			t.Errorf("mid-stream: client %s, midstream %v", c.Client, c.Midstream)
		}
	})
}

func TestRSTAndTimeout(t *testing.T) {
	m := New(Options{IdleTimeout: time.Second})
	var ends []string
	m.On(EvConnEnd, HookSend, func(c *Conn, _ Side, _ Event) { ends = append(ends, c.EndReason) })
	at := time.Unix(1000, 0)
	m.Process(LinkEthernet, c2s(100, 0, syn, ""), at)
	m.Process(LinkEthernet, s2c(0, 101, rst|ack, ""), at)
	m.Process(LinkEthernet, seg(cli, srv, 40001, 80, 7, 0, syn, ""), at)
	m.Process(LinkEthernet, seg("198.18.0.9", srv, 1, 2, 7, 0, ack, ""), at.Add(3*time.Second))
	if !slices.Equal(ends, []string{EndRST, EndTimeout}) {
		t.Errorf("ends %v", ends)
	}
}

// User-defined events nest: an event on an event.
func TestEventForest(t *testing.T) {
	m := New(Options{})
	data := m.DefineEvent(EvNewData, func(c *Conn, side Side) bool { return side == Server })
	get := m.DefineEvent(data, func(c *Conn, side Side) bool {
		b, _ := c.Peek(side)
		return strings.HasPrefix(string(b), "GET ")
	})
	var hits []string
	m.On(get, HookRecv, func(c *Conn, side Side, ev Event) { hits = append(hits, ev.String()+" "+side.String()) })
	at := time.Unix(1, 0)
	for _, f := range [][]byte{c2s(100, 0, syn, ""), s2c(500, 101, synack, ""), c2s(101, 501, psh, "GET /"), s2c(501, 106, psh, "GET?")} {
		m.Process(LinkEthernet, f, at)
	}
	if len(hits) != 1 || hits[0] != get.String()+" server" {
		t.Errorf("hits %v", hits)
	}
}

// Orphans: non-TCP and undecodable frames, counted, never a panic.
func TestOrphans(t *testing.T) {
	m := New(Options{})
	n := 0
	m.On(EvOrphan, HookRecv, func(c *Conn, _ Side, _ Event) {
		if c != nil {
			t.Error("orphan with a connection")
		}
		n++
	})
	at := time.Unix(1, 0)
	m.Process(LinkEthernet, []byte{1, 2, 3}, at)         // truncated
	m.Process(LinkEthernet, c2s(1, 0, syn, "")[:40], at) // TCP header cut
	m.Process(LinkEthernet, make([]byte, 60), at)        // not IP
	m.Process(LinkType(9999), c2s(1, 0, syn, ""), at)    // unknown link
	if st := m.Stats(); n != 4 || st.Malformed != 3 || st.Orphans != 4 || st.Conns != 0 {
		t.Errorf("%d orphan events, stats %+v", n, st)
	}
}

// EventCounts counts each event once, though raised at two hooks.
func TestEventCounts(t *testing.T) {
	m := New(Options{})
	m.On(EvConnEnd, HookRecv, func(*Conn, Side, Event) {})
	m.On(EvConnStart, HookSend, func(*Conn, Side, Event) {})
	replay(t, m, c2s(100, 0, syn, ""), s2c(500, 101, synack, ""), c2s(101, 501, ack, ""),
		c2s(101, 501, rst, ""))
	got := m.EventCounts()
	if got[EvConnStart] != 1 || got[EvConnEnd] != 1 || got[EvStateChange] == 0 {
		t.Errorf("event counts %v", got)
	}
}

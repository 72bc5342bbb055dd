package monitor

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// verdicts runs frames one at a time and returns each one's fate: "fwd",
// "drop", or "mod" (forwarded replaced).
func verdicts(m *Monitor, frames ...[]byte) []string {
	var out []string
	at := time.Unix(1000, 0)
	for i, f := range frames {
		m.Process(LinkEthernet, f, at.Add(time.Duration(i)*time.Millisecond))
		drop, fwd := m.PacketVerdict()
		switch {
		case drop:
			out = append(out, "drop")
		case !bytes.Equal(fwd, f):
			out = append(out, "mod")
		default:
			out = append(out, "fwd")
		}
	}
	return out
}

// A firewall's block: the packet carrying the forbidden request and every
// later one of its connection, both ways, are dropped; the connection ends
// with reason "drop"; the data plane hears of it once; a new connection on
// the same ports is judged afresh.
func TestConnDrop(t *testing.T) {
	m := New(Options{})
	evil := m.DefineEvent(EvNewData, func(c *Conn, side Side) bool {
		got, _ := c.Peek(side)
		return side == Server && strings.Contains(string(got), "EVIL")
	})
	m.On(evil, HookRecv, func(c *Conn, _ Side, _ Event) { c.Drop() })
	var actions []string
	m.OnFlowAction(func(c *Conn, a FlowAction) { actions = append(actions, a.String()) })
	var ended []string
	m.On(EvConnEnd, HookSend, func(c *Conn, _ Side, _ Event) { ended = append(ended, c.EndReason) })

	got := verdicts(m,
		c2s(100, 0, syn, ""),
		s2c(500, 101, synack, ""),
		c2s(101, 501, ack, ""),
		c2s(101, 501, psh, "GOOD "),
		s2c(501, 106, ack, ""),
		c2s(106, 501, psh, "EVIL"), // the block
		s2c(501, 106, ack, ""),     // late, the other way
		c2s(106, 501, psh, "EVIL"), // retransmitted
		c2s(100, 0, syn, ""),       // the old SYN again
		c2s(9000, 0, syn, ""),      // a new connection, same ports
		s2c(7000, 9001, synack, ""),
	)
	want := []string{"fwd", "fwd", "fwd", "fwd", "fwd", "drop", "drop", "drop", "drop", "fwd", "fwd"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("verdicts %v, want %v", got, want)
	}
	if strings.Join(actions, " ") != "drop" {
		t.Errorf("flow actions %v, want one drop", actions)
	}
	if len(ended) != 1 || ended[0] != EndDropped {
		t.Errorf("ends %v, want one %q", ended, EndDropped)
	}
	n := 0
	m.Conns(func(c *Conn) {
		n++
		if c.Dropped() != (c.EndReason == EndDropped) {
			t.Errorf("conn %d: dropped %v, end %q", c.ID, c.Dropped(), c.EndReason)
		}
	})
	if n != 1 || m.Stats().Conns != 2 {
		t.Errorf("%d conns in the table, %d seen; want the new one of 2", n, m.Stats().Conns)
	}
}

// Per-packet verdicts: DropPacket drops one packet only; ReplacePacket
// forwards another frame; both sides stopping hands the connection to the
// fast path once.
func TestPacketVerdicts(t *testing.T) {
	m := New(Options{})
	m.On(EvPktIn, HookRecv, func(c *Conn, side Side, _ Event) {
		p := m.Packet()
		switch string(p.Payload) {
		case "drop me":
			m.DropPacket()
		case "swap me":
			f := bytes.Clone(p.Frame)
			copy(f[len(f)-7:], "swapped")
			m.ReplacePacket(f)
		case "bye":
			c.StopMonitoring(Client)
			c.StopMonitoring(Server)
			c.StopMonitoring(Server)
		}
	})
	var actions []string
	m.OnFlowAction(func(c *Conn, a FlowAction) { actions = append(actions, a.String()) })
	got := verdicts(m,
		c2s(100, 0, syn, ""),
		s2c(500, 101, synack, ""),
		c2s(101, 501, psh, "drop me"),
		c2s(101, 501, psh, "swap me"),
		c2s(108, 501, psh, "bye"),
		c2s(111, 501, psh, "drop me"), // nobody is listening any more
	)
	if want := "fwd fwd drop mod fwd fwd"; strings.Join(got, " ") != want {
		t.Errorf("verdicts %v, want %s", got, want)
	}
	if strings.Join(actions, " ") != "bypass" {
		t.Errorf("flow actions %v, want one bypass", actions)
	}
}

// FixChecksums gives the checksums a serialiser computes from scratch.
func TestFixChecksums(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		eth := &layers.Ethernet{SrcMAC: []byte{2, 0, 0, 0, 0, 1}, DstMAC: []byte{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		tcp := &layers.TCP{SrcPort: 80, DstPort: 40000, Seq: 7, Ack: 9, ACK: true, PSH: true, Window: 500}
		var ip gopacket.SerializableLayer
		if v6 {
			eth.EthernetType = layers.EthernetTypeIPv6
			ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
				SrcIP: []byte{0xfd, 0, 1, 0x98, 15: 1}, DstIP: []byte{0xfd, 0, 1, 0x98, 15: 2}}
			tcp.SetNetworkLayerForChecksum(ip6)
			ip = ip6
		} else {
			ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: []byte{198, 18, 0, 1}, DstIP: []byte{198, 18, 1, 1}}
			tcp.SetNetworkLayerForChecksum(ip4)
			ip = ip4
		}
		build := func(body string) []byte {
			buf := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
				eth, ip, tcp, gopacket.Payload(body)); err != nil {
				t.Fatal(err)
			}
			return buf.Bytes()
		}
		frame, want := build("hello, world"), build("HELLO, world")
		copy(frame[len(frame)-12:], "HELLO")
		if err := FixChecksums(frame); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(frame, want) {
			t.Errorf("v6=%v: fixed\n%x\nwant\n%x", v6, frame, want)
		}
	}
	if err := FixChecksums([]byte{1, 2, 3}); err == nil {
		t.Error("a truncated frame: no error")
	}
}

package monitor_test

import (
	"fmt"
	"path/filepath"

	"github.com/mbx-net/mbx/monitor"
)

// The retransmission-inconsistency detector from the mOS paper, as a
// user-defined event on REXMIT, run on suricata-verify's exact-overlap
// capture: "GOOD" is sent, then retransmitted as "EVIL".
func Example_inconsistentRetransmission() {
	m := monitor.New(monitor.Options{})
	fake := m.DefineEvent(monitor.EvRexmit, func(c *monitor.Conn, side monitor.Side) bool {
		return c.Inconsistencies(side) > 0
	})
	m.On(fake, monitor.HookRecv, func(c *monitor.Conn, side monitor.Side, _ monitor.Event) {
		got, _ := c.Peek(side)
		fmt.Printf("%s received a retransmission that differs; kept %q\n", side, got)
	})
	path := filepath.Join("..", "..", "shared", "corpus", "cases", "s01-tcp-exact-overlap", "tcp-overlap.pcap")
	if err := monitor.ReadFile(path, m); err != nil {
		fmt.Println(err)
	}
	// Output:
	// server received a retransmission that differs; kept "GOOD"
}

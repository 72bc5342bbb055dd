package e2e

import (
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLabLateFIN: a lab endpoint that closed first acknowledges the peer's
// FIN when it comes after the peer's ACK, also seconds later, instead of
// resetting the connection. The lab refuses TIME_WAIT sockets
// (tcp_max_tw_buckets=0), which alone turns that late FIN into a RST; a
// monitor then sees connections end with a RST that no datapath sent
// (lab/topology.go says why fin_timeout fixes it). The client here is
// rs2, talking to rs1's nginx on the switch: no mbx on the path.
func TestLabLateFIN(t *testing.T) {
	e, _ := twoArmNoDaemon(t)
	before := nstat(t, e, "rs1")
	for _, wait := range []time.Duration{100 * time.Millisecond, 1500 * time.Millisecond} {
		var c net.Conn
		err := e.lab.Do("rs2", func() (err error) {
			c, err = net.DialTimeout("tcp", "198.18.1.2:80", 5*time.Second)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: rs1\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, c); err != nil { // to nginx's FIN
			t.Fatal(err)
		}
		// Our kernel acknowledges nginx's FIN on its own (a delayed ACK);
		// our FIN follows in a later segment.
		time.Sleep(wait)
		c.Close()
	}
	time.Sleep(200 * time.Millisecond) // the answer to the last FIN
	after := nstat(t, e, "rs1")
	if n := after["TcpOutRsts"] - before["TcpOutRsts"]; n != 0 {
		t.Errorf("rs1 sent %d RSTs for 2 connections closed by the client's late FIN", n)
	}
	if after["TcpExtTCPTimeWaitOverflow"] == before["TcpExtTCPTimeWaitOverflow"] {
		t.Error("rs1 kept TIME_WAIT sockets: the lab's premise (tcp_max_tw_buckets=0) changed")
	}
}

// nstat reads a host's TCP counters (absolute values).
func nstat(t *testing.T, e *env, host string) map[string]int {
	t.Helper()
	out := e.host(host, "nstat", "-az", "TcpOutRsts", "TcpExtTCPTimeWaitOverflow")
	m := map[string]int{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			if n, err := strconv.Atoi(f[1]); err == nil {
				m[f[0]] = n
			}
		}
	}
	return m
}

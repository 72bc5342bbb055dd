package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mbx-net/mbx/monitor"
	"github.com/mbx-net/mbx/monitor/midstat"
)

// monitorEvent is a line of mbx run --monitor-log.
type monitorEvent struct {
	Time        float64 `json:"t"`
	Event       string  `json:"event"`
	Hook        string  `json:"hook"`
	Side        string  `json:"side"`
	Conn        uint64  `json:"conn"`
	Client      string  `json:"client"`
	Server      string  `json:"server"`
	ClientState string  `json:"client_state"`
	ServerState string  `json:"server_state"`
	EndReason   string  `json:"end_reason"`
}

func readMonitorLog(t *testing.T, path string) []monitorEvent {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []monitorEvent
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev monitorEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("monitor log line %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	return out
}

// connLife is what the log says about each connection.
type connLife struct {
	server    string
	started   bool
	endReason string
	events    []monitorEvent // in log order, for a failure's message
}

func connLives(evs []monitorEvent) map[uint64]*connLife {
	lives := map[uint64]*connLife{}
	for _, ev := range evs {
		l := lives[ev.Conn]
		if l == nil {
			l = &connLife{server: ev.Server}
			lives[ev.Conn] = l
		}
		l.events = append(l.events, ev)
		switch ev.Event {
		case "CONN_START":
			l.started = true
		case "CONN_END":
			l.endReason = ev.EndReason
		}
	}
	return lives
}

// waitAllEnded waits until every connection in the monitor log has ended,
// and returns what the log says of them.
func waitAllEnded(t *testing.T, logPath string) map[uint64]*connLife {
	t.Helper()
	var lives map[uint64]*connLife
	waitFor(t, 10*time.Second, func() bool {
		lives = connLives(readMonitorLog(t, logPath))
		for _, l := range lives {
			if l.endReason == "" {
				return false
			}
		}
		return len(lives) > 0
	}, "CONN_END for every connection in the monitor log")
	return lives
}

func (e *env) monitorTable(t *testing.T) []midstat.Row {
	out := e.mustMbx("stat", "--json")
	var rows []midstat.Row
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var r midstat.Row
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("mbx stat --json line %q: %v", l, err)
		}
		rows = append(rows, r)
	}
	return rows
}

// TestMonitorLive: the stream monitor on a tap (the server's mirrored
// port) while wrk, curl and a long iperf3 transfer run: live midstat shows
// the transfer established with its counters moving, and the event log has
// a start and an end (FIN) for every connection, wrk's and curl's included.
func TestMonitorLive(t *testing.T) {
	need(t, "wrk")
	logPath := filepath.Join(t.TempDir(), "events.jsonl")
	e := newTapEnv(t, "--monitor", "in0", "--monitor-log", logPath)
	e.background("srv", "iperf3", "-s", "-p", "5201")
	e.waitTCP("srv", "127.0.0.1:5201")

	iperfDone := make(chan error, 1)
	go func() {
		_, err := e.lab.Run("client1", "iperf3", "-c", "198.18.2.10", "-p", "5201", "-b", "50M", "-t", "4")
		iperfDone <- err
	}()
	// Live midstat during the transfer: its data connection is established
	// on both sides and its packet count grows between two reads.
	var first uint64
	waitFor(t, 3*time.Second, func() bool {
		for _, r := range e.monitorTable(t) {
			if r.Server == "198.18.2.10:5201" && r.ClientState == "ESTABLISHED" && r.ServerState == "ESTABLISHED" && r.Packets[0] > 100 {
				if first == 0 {
					first = r.Packets[0]
					return false
				}
				return r.Packets[0] > first
			}
		}
		return false
	}, "the iperf3 transfer in mbx stat, established, packets growing")

	out := e.host("client2", "wrk", "-t1", "-c8", "-d2s", "http://198.18.2.10/")
	wrkClean(t, out)
	e.host("client3", "sh", "-c", "for i in $(seq 5); do curl -s -o /dev/null --max-time 5 http://198.18.2.10/ || exit 1; done")
	if err := <-iperfDone; err != nil {
		t.Fatalf("iperf3: %v", err)
	}

	// Every connection ends: wrk's 8, curl's 5, iperf3's control and data.
	lives := waitAllEnded(t, logPath)
	web, iperf := 0, 0
	for id, l := range lives {
		if !l.started {
			t.Errorf("conn %d ended without a CONN_START", id)
		}
		if l.endReason != "fin" && l.endReason != "rst" {
			t.Errorf("conn %d to %s ended by %q, want fin or rst", id, l.server, l.endReason)
		}
		switch l.server {
		case "198.18.2.10:80":
			web++
		case "198.18.2.10:5201":
			iperf++
		}
	}
	// wrk may open one more connection than -c (its connect check).
	if web < 8+5 || web > 8+5+1 || iperf != 2 {
		t.Errorf("%d web connections (want 13: wrk's 8, curl's 5), %d iperf3 (want 2)", web, iperf)
	}
	// The table keeps ended connections a while, with how they ended.
	byReason := map[string]int{}
	for _, l := range lives {
		byReason[l.endReason]++
	}
	tableReason := map[string]int{}
	for _, r := range e.monitorTable(t) {
		tableReason[r.EndReason]++
	}
	for reason, n := range byReason {
		if tableReason[reason] != n {
			t.Errorf("mbx stat: %v ended connections by reason, the event log: %v", tableReason, byReason)
			break
		}
	}
	t.Logf("connections by end reason: %v", byReason)
	if out := e.mustMbx("stat"); !strings.Contains(out, "0 reports lost") {
		t.Errorf("mbx stat: %s", out)
	}
}

// TestMonitorLiveFilter: the stream filter runs in XDP: only web
// connections are tracked; iperf3's are filtered out.
func TestMonitorLiveFilter(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "events.jsonl")
	e := newTapEnv(t, "--monitor", "in0", "--monitor-log", logPath, "--monitor-filter", "tcp port 80")
	e.background("srv", "iperf3", "-s", "-p", "5201")
	e.waitTCP("srv", "127.0.0.1:5201")
	// A capture on the monitored interface swaps in its own copy of the
	// datapath, which must keep the monitor's filter.
	pcapng, capLog := filepath.Join(e.dir, "cap.pcapng"), filepath.Join(e.dir, "capture.log")
	logf, err := os.Create(capLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	capCmd := e.lab.Command("lb", mbxBin, "capture", "-i", "in0", "-w", pcapng, "--duration", "30s", "tcp port 5201")
	capCmd.Env = append(os.Environ(), "MBX_SOCKET="+e.socket)
	capCmd.Stdout, capCmd.Stderr = logf, logf
	if err := capCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { capCmd.Process.Kill(); capCmd.Wait() }()
	waitFor(t, 10*time.Second, func() bool {
		b, _ := os.ReadFile(capLog)
		if strings.Contains(string(b), "mbx: ") || strings.Contains(string(b), "warning") {
			t.Fatalf("mbx capture: %s", b)
		}
		return strings.Contains(string(b), "capturing on in0")
	}, "mbx capture to start")
	e.host("client1", "iperf3", "-c", "198.18.2.10", "-p", "5201", "-b", "20M", "-n", "2M")
	e.host("client3", "sh", "-c", "for i in $(seq 4); do curl -s -o /dev/null --max-time 5 http://198.18.2.10/ || exit 1; done")
	var lives map[uint64]*connLife
	waitFor(t, 5*time.Second, func() bool {
		lives = connLives(readMonitorLog(t, logPath))
		n := 0
		for _, l := range lives {
			if l.endReason != "" {
				n++
			}
		}
		return n == 4
	}, "4 ended web connections in the monitor log")
	for id, l := range lives {
		if l.server != "198.18.2.10:80" {
			t.Errorf("conn %d to %s tracked despite the filter", id, l.server)
		}
	}
	if out := e.mustMbx("stat"); strings.Contains(out, " 0 filtered") {
		t.Errorf("nothing filtered: %s", out)
	}
	capCmd.Process.Signal(os.Interrupt)
	capCmd.Wait()
	f, err := os.Open(pcapng)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	captured := 0
	if err := monitor.ReadFrames(f, func(monitor.LinkType, []byte, time.Time, int) { captured++ }); err != nil {
		t.Fatal(err)
	}
	if captured < 100 {
		t.Errorf("the capture running meanwhile recorded %d packets of iperf3's", captured)
	}
}

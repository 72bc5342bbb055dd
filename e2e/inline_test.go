package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/monitor"
	"github.com/mbx-net/mbx/telemetry/otlptest"
)

func (e *env) monitorStatus(t *testing.T) *control.MonitorStatus {
	t.Helper()
	st, err := control.NewClient(e.socket).MonitorStatus()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// inlineEnv is the inline lab: client -- in0 [lb] in1 -- srv, with nginx
// (and a 20 MB file) and iperf3 on srv.
func inlineEnv(t *testing.T) (*env, string) {
	need(t, "nginx", "curl", "iperf3", "wrk", "ping")
	e := newEnv(t, "inline")
	sum := writeRandom(t, filepath.Join(e.filesDir(), "20M.bin"), 20<<20)
	e.nginx("srv")
	e.background("srv", "iperf3", "-s", "-p", "5201")
	e.waitTCP("srv", "127.0.0.1:5201")
	return e, sum
}

func (e *env) download(sum string) {
	e.t.Helper()
	out := e.host("client", "bash", "-c", "curl -sS --max-time 30 http://198.18.6.10/files/20M.bin | sha256sum")
	if got, _, _ := strings.Cut(out, " "); got != sum {
		e.t.Fatalf("download through the inline monitor: sha256 %s, want %s", got, sum)
	}
}

// midstatTraffic runs ping, wrk, a download and iperf3 through an inline
// monitor logging to logPath, and checks each connection started and
// ended in the log.
func (e *env) midstatTraffic(sum, logPath string) {
	t := e.t
	t.Helper()
	e.host("client", "ping", "-c", "2", "-W", "2", "198.18.6.10")
	wrkClean(t, e.host("client", "wrk", "-t1", "-c4", "-d2s", "http://198.18.6.10/"))
	e.download(sum)
	e.host("client", "iperf3", "-c", "198.18.6.10", "-p", "5201", "-n", "20M")
	lives := waitAllEnded(t, logPath)
	web, iperf := 0, 0
	for id, l := range lives {
		if !l.started || (l.endReason != "fin" && l.endReason != "rst") {
			t.Errorf("conn %d to %s: started %v, ended %q", id, l.server, l.started, l.endReason)
		}
		switch l.server {
		case "198.18.6.10:80":
			web++
		case "198.18.6.10:5201":
			iperf++
		}
	}
	// wrk's 4 (and its connect check), the download; iperf3's two.
	if web < 5 || web > 6 || iperf != 2 {
		t.Errorf("%d web connections (want 5 or 6), %d iperf3 (want 2)", web, iperf)
	}
}

// firewall is the inline firewall example running on lb.
type firewall struct {
	cmd    *exec.Cmd
	output func() string
}

// startFirewall builds the example (with tags) and runs it with args,
// blocking GET /files/secret and rewriting "srv 198" in answers.
func (e *env) startFirewall(tags string, args ...string) *firewall {
	t := e.t
	t.Helper()
	bin := filepath.Join(t.TempDir(), "inline-firewall")
	if out, err := exec.Command("go", "build", "-tags", tags, "-o", bin, "../examples/inline-firewall").CombinedOutput(); err != nil {
		t.Fatalf("building the example: %v\n%s", err, out)
	}
	outPath := filepath.Join(t.TempDir(), "firewall.out")
	outFile, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outFile.Close() })
	fw := &firewall{output: func() string { b, _ := os.ReadFile(outPath); return string(b) }}
	fw.cmd = e.lab.Command("lb", bin, append(args, "-filter", "tcp port 80", "-deny", "GET /files/secret", "-rewrite", "srv 198=SRV 198")...)
	fw.cmd.Stdout, fw.cmd.Stderr = outFile, outFile
	if err := fw.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.cmd.Process.Kill(); fw.cmd.Wait() })
	waitFor(t, 20*time.Second, func() bool { return strings.Contains(fw.output(), "INFO inline") }, "the firewall running")
	return fw
}

// blockAndRewrite: three answers rewritten, the forbidden request cut.
func (e *env) blockAndRewrite() {
	t := e.t
	t.Helper()
	for range 3 {
		if got := e.curl("http://198.18.6.10/"); !strings.HasPrefix(got, "SRV 198.18.6.2:") {
			t.Errorf("the answer %q was not rewritten", got)
		}
	}
	blocked := e.lab.Command("client", "curl", "-sS", "--max-time", "2", "http://198.18.6.10/files/secret")
	if b, err := blocked.CombinedOutput(); err == nil || !strings.Contains(string(b), "timed out") {
		t.Errorf("the forbidden request went through: %v %s", err, b)
	}
}

// stop ends the firewall and checks it blocked one connection.
func (fw *firewall) stop(t *testing.T) {
	t.Helper()
	fw.cmd.Process.Signal(syscall.SIGINT)
	if err := fw.cmd.Wait(); err != nil {
		t.Fatalf("the firewall: %v\n%s", err, fw.output())
	}
	if !strings.Contains(fw.output(), "blocked 1 connections") {
		t.Errorf("the firewall's report: %s", fw.output())
	}
}

// TestInlineMonitor: mOS's inline midstat. Every packet between client and
// srv crosses mbx (in0 <-> in1); with no filter all of it goes through Go
// (AF_XDP) and is sent on: wrk, a sha256-checked download, iperf3 and ping
// all work, and every connection has a start and an end. With a filter,
// what it does not select is forwarded in XDP.
func TestInlineMonitor(t *testing.T) {
	e, sum := inlineEnv(t)
	logPath := filepath.Join(t.TempDir(), "events.jsonl")
	e.startDaemon("--inline", "in0:in1", "--pin-dir", "none", "--monitor-log", logPath)
	e.midstatTraffic(sum, logPath)
	st := e.monitorStatus(t)
	if !st.Inline || st.Stats.ToGo == 0 || st.Stats.Forwarded != 0 || st.Stats.GoDropped != 0 || st.Stats.NoSocket != 0 {
		t.Errorf("without a filter everything goes through Go and nothing is dropped: %+v", st.Stats)
	}
	if st.Stats.GoForwarded+st.Stats.TxFull != st.Stats.ToGo {
		t.Errorf("Go forwarded %d (+%d lost) of the %d packets it got", st.Stats.GoForwarded, st.Stats.TxFull, st.Stats.ToGo)
	}
	e.stopDaemon()

	// With a filter: web connections through Go, iperf3 and ping in XDP.
	e.startDaemon("--inline", "in0:in1", "--pin-dir", "none", "--monitor-filter", "tcp port 80")
	e.host("client", "ping", "-c", "2", "-W", "2", "198.18.6.10")
	e.download(sum)
	e.host("client", "iperf3", "-c", "198.18.6.10", "-p", "5201", "-n", "50M")
	st = e.monitorStatus(t)
	for _, r := range st.Conns {
		if r.Server != "198.18.6.10:80" {
			t.Errorf("%s -> %s reached Go despite the filter", r.Client, r.Server)
		}
	}
	// iperf3's 50 MB in XDP (at least 12800 packets even if some were
	// 4 KB), the 20 MB download's packets (and its ACKs) through Go.
	if len(st.Conns) != 1 || st.Stats.Forwarded < 50<<20/4096 || st.Stats.ToGo > 20<<20/1000 {
		t.Errorf("filtered: %d connections in Go (want the download's), stats %+v", len(st.Conns), st.Stats)
	}
}

// TestInlineFirewall runs the monitor's inline example: the connection
// whose client sends the forbidden request is cut, and that request never
// reaches the server; every other request, the download, iperf3 (forwarded
// in XDP, outside the filter) and ping pass, and the server's answers are
// rewritten as asked.
func TestInlineFirewall(t *testing.T) {
	e, sum := inlineEnv(t)
	fw := e.startFirewall("", "-pair", "in0:in1")
	srvCap := e.tcpdump("srv", "eth0", filepath.Join(t.TempDir(), "srv.pcap"), "tcp port 80")
	e.blockAndRewrite()
	// What the server received: the three requests, not the forbidden one.
	frames := srvCap.stop(t)
	wrkClean(t, e.host("client", "wrk", "-t1", "-c4", "-d2s", "http://198.18.6.10/"))
	e.download(sum)
	e.host("client", "iperf3", "-c", "198.18.6.10", "-p", "5201", "-n", "20M")
	e.host("client", "ping", "-c", "2", "-W", "2", "198.18.6.10")
	fw.stop(t)

	m := monitor.New(monitor.Options{})
	var received bytes.Buffer
	m.On(monitor.EvNewData, monitor.HookRecv, func(c *monitor.Conn, side monitor.Side, _ monitor.Event) {
		if side == monitor.Server {
			got, _ := c.Peek(side)
			received.WriteString(string(got) + "\n")
			c.SetBuffer(side, false)
			c.SetBuffer(side, true)
		}
	})
	for i, f := range frames {
		m.Process(monitor.LinkEthernet, f, time.Unix(int64(i), 0))
	}
	if strings.Contains(received.String(), "secret") {
		t.Errorf("the server received the forbidden request")
	}
	if n := strings.Count(received.String(), "GET / HTTP"); n != 3 {
		t.Errorf("the server received %d requests for /, want curl's 3", n)
	}
}

// TestMonitorTelemetry: connection-lifecycle spans from the monitor's
// events reach an OTLP receiver (every connection at rate 1: start, state
// changes, end with its reason and counters), and the metrics page has the
// monitor's counters and events by type.
func TestMonitorTelemetry(t *testing.T) {
	e, _ := inlineEnv(t)
	rcv := e.otlpReceiver()
	e.startDaemon("--inline", "in0:in1", "--pin-dir", "none", "--monitor-filter", "tcp port 80",
		"--trace-conns", "1", "--metrics-addr", "127.0.0.1:9464")
	for range 3 {
		e.curl("http://198.18.6.10/")
	}
	var got []otlptest.Span
	waitFor(t, 10*time.Second, func() bool {
		got = got[:0]
		for _, s := range rcv.Spans() {
			if s.Name == "mbx.conn" {
				got = append(got, s)
			}
		}
		return len(got) == 3
	}, "3 connection spans")
	for _, s := range got {
		states := 0
		for _, ev := range s.Events {
			if ev == "state_change" {
				states++
			}
		}
		if s.Attrs["mbx.server"] != "198.18.6.10:80" || !strings.HasPrefix(s.Attrs["mbx.client"], "198.18.6.2:") ||
			s.Attrs["mbx.end_reason"] != "fin" || states < 8 {
			t.Errorf("span %v, %d state changes", s.Attrs, states)
		}
	}
	page := e.host("lb", "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9464/metrics")
	for _, want := range []string{`mbx_monitor_connections_total 3`, `mbx_monitor_events_total{event="CONN_END"} 3`,
		`mbx_monitor_inline_packets_total{path="go_dropped"} 0`, `mbx_monitor_packets_total{kind="tcp"}`} {
		if !strings.Contains(page, want) {
			t.Errorf("metrics page lacks %s", want)
		}
	}
}

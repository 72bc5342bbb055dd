package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mbx-net/mbx/telemetry/otlptest"
)

// Metrics and traces of a Full-NAT service under wrk: the Prometheus page
// parses, its per-service and per-real counters equal `ipvsadm -ln --stats`,
// and an OTLP receiver gets the ipvsadm operations as spans.
func TestObservability(t *testing.T) {
	need(t, "wrk")
	e, _ := twoArmNoDaemon(t)

	rcv := e.otlpReceiver()
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--metrics-addr", "127.0.0.1:9464", "--log-format", "json")
	e.mustMbx("addr", "add", vip+"/32", "dev", "wan0")
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		-a -t 198.18.0.100:80 -r 198.18.1.3 -b -w 2
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)

	wrkClean(t, e.host("client", "wrk", "-t2", "-c8", "-d3s", "http://"+vip+"/"))
	time.Sleep(1500 * time.Millisecond) // one sweep: active/inactive counts

	stats := e.mustMbx("ipvsadm", "-ln", "--stats", "--exact")
	page := e.host("lb", "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9464/metrics")
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(page))
	if err != nil {
		t.Fatalf("metrics page is not Prometheus text: %v\n%s", err, page)
	}
	for name, f := range fams {
		if strings.HasPrefix(name, "mbx_") && f.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}

	// ipvsadm --stats rows: name conns inpkts outpkts inbytes outbytes.
	rows := map[string][]uint64{}
	for _, l := range strings.Split(stats, "\n") {
		f := strings.Fields(l)
		key := ""
		switch {
		case len(f) == 7 && f[0] == "TCP":
			key = "svc"
		case len(f) == 7 && f[0] == "->":
			key = f[1]
		default:
			continue
		}
		for _, x := range f[2:] {
			n, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				t.Fatalf("ipvsadm --stats line %q: %v", l, err)
			}
			rows[key] = append(rows[key], n)
		}
	}
	if len(rows) != 3 {
		t.Fatalf("ipvsadm --stats: want a service and two reals:\n%s", stats)
	}
	if rows["svc"][0] == 0 {
		t.Fatalf("no connections counted:\n%s", stats)
	}
	svc := map[string]string{"service": vip + ":80", "protocol": "tcp"}
	check := func(metricName string, labels map[string]string, want uint64) {
		t.Helper()
		got, ok := sample(fams[metricName], labels)
		if !ok {
			t.Errorf("%s%v: missing", metricName, labels)
		} else if uint64(got) != want {
			t.Errorf("%s%v = %v, ipvsadm says %d", metricName, labels, got, want)
		}
	}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	check("mbx_service_connections_total", svc, rows["svc"][0])
	check("mbx_service_packets_total", with(svc, "direction", "in"), rows["svc"][1])
	check("mbx_service_packets_total", with(svc, "direction", "out"), rows["svc"][2])
	check("mbx_service_bytes_total", with(svc, "direction", "in"), rows["svc"][3])
	check("mbx_service_bytes_total", with(svc, "direction", "out"), rows["svc"][4])
	for _, rs := range []string{"198.18.1.2:80", "198.18.1.3:80"} {
		r := with(svc, "real", rs)
		check("mbx_real_connections_total", r, rows[rs][0])
		check("mbx_real_packets_total", with(r, "direction", "in"), rows[rs][1])
		check("mbx_real_packets_total", with(r, "direction", "out"), rows[rs][2])
		check("mbx_real_bytes_total", with(r, "direction", "in"), rows[rs][3])
		check("mbx_real_bytes_total", with(r, "direction", "out"), rows[rs][4])
	}
	check("mbx_real_weight", with(svc, "real", "198.18.1.3:80"), 2)
	for _, m := range []struct {
		name   string
		labels map[string]string
	}{
		{"mbx_xdp_packets_total", map[string]string{"interface": "wan0", "verdict": "redirect"}},
		{"mbx_xdp_packets_total", map[string]string{"interface": "lan0", "verdict": "redirect"}},
		{"mbx_conntable_entries", nil},
		{"mbx_conntable_capacity", nil},
		{"mbx_laddr_ports_used", with(svc, "laddr", "198.18.1.200")},
		{"mbx_laddr_ports_free", with(svc, "laddr", "198.18.1.200")},
		{"mbx_datapath_events_total", map[string]string{"event": "conn_new"}},
	} {
		if v, ok := sample(fams[m.name], m.labels); !ok || v <= 0 {
			t.Errorf("%s%v = %v (present %v), want > 0", m.name, m.labels, v, ok)
		}
	}
	if _, ok := sample(fams["mbx_drops_total"], map[string]string{"reason": "no_conn"}); !ok {
		t.Errorf("mbx_drops_total{reason=no_conn} missing")
	}

	// Traces: each ipvsadm command is a span with its operation.
	span, ok := rcv.Wait(10*time.Second, func(s otlptest.Span) bool {
		return s.Name == "ipvsadm" && s.Attrs["mbx.op"] == "add-real" && s.Attrs["mbx.real"] == "198.18.1.3:80"
	})
	if !ok {
		t.Fatalf("no span for ipvsadm -a; received %+v", rcv.Spans())
	}
	if span.Attrs["mbx.real.weight"] != "2" || span.Attrs["mbx.service"] != "TCP "+vip+":80" ||
		!strings.Contains(span.Attrs["mbx.command"], "-r 198.18.1.3 -b -w 2") {
		t.Errorf("ipvsadm -a span attributes: %v", span.Attrs)
	}
	// A refused command is a span with an error status.
	if _, err := e.mbx("ipvsadm", "-a", "-t", vip+":80", "-r", "198.18.1.2", "-b"); err == nil {
		t.Fatal("adding a real server twice was accepted")
	}
	if _, ok := rcv.Wait(10*time.Second, func(s otlptest.Span) bool {
		return s.Name == "ipvsadm" && s.Status == "error" && s.Attrs["mbx.real"] == "198.18.1.2:80"
	}); !ok {
		t.Errorf("no error span for the refused ipvsadm -a")
	}

	// mbx trace: one curl's flow, every packet in and out, and the
	// decisions behind it, printed and as a span.
	tr := e.lab.Command("lb", mbxBin, "trace", "-i", "wan0", "--duration", "4s", "tcp and host 198.18.0.2 and port 80")
	tr.Env = append(os.Environ(), "MBX_SOCKET="+e.socket)
	tr.Env = append(tr.Env, e.daemonEnv...)
	trOut := filepath.Join(e.dir, "trace.out")
	f, err := os.Create(trOut)
	if err != nil {
		t.Fatal(err)
	}
	tr.Stdout, tr.Stderr = f, f
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { b, _ := os.ReadFile(trOut); return strings.Contains(string(b), "tracing") }, "mbx trace running")
	e.curl("http://" + vip + "/")
	if err := tr.Wait(); err != nil {
		b, _ := os.ReadFile(trOut)
		t.Fatalf("mbx trace: %v\n%s", err, b)
	}
	f.Close()
	b, _ := os.ReadFile(trOut)
	out := string(b)
	for _, want := range []string{"flow 198.18.0.2:", " > " + vip + ":80 tcp", "-> real server 198.18.1.", "via local address 198.18.1.200:",
		"scheduler rr", "entry 198.18.0.2:", "exit XDP_REDIRECT 198.18.1.200:"} {
		if !strings.Contains(out, want) {
			t.Errorf("mbx trace output lacks %q:\n%s", want, out)
		}
	}
	span, ok = rcv.Wait(10*time.Second, func(s otlptest.Span) bool { return s.Name == "mbx.trace" })
	if !ok {
		t.Fatalf("no mbx.trace span")
	}
	if !strings.HasPrefix(span.Attrs["mbx.real"], "198.18.1.") || span.Attrs["mbx.scheduler"] != "rr" ||
		span.Attrs["mbx.real.forward"] != "fnat" || len(span.Events) < 6 {
		t.Errorf("mbx.trace span: %v, events %v", span.Attrs, span.Events)
	}

	// Log level at run time.
	e.mustMbx("log-level", "debug")
	if got := strings.TrimSpace(e.mustMbx("log-level")); got != "debug" {
		t.Errorf("log-level after setting debug: %q", got)
	}
	if out, err := e.mbx("log-level", "loud"); err == nil || !strings.Contains(out, `bad log level "loud"`) {
		t.Errorf("log-level loud: %v %s", err, out)
	}
}

// otlpReceiver starts an OTLP/HTTP trace receiver inside the lb host, where
// the daemon runs, and points the daemon (and mbx commands run with
// daemonEnv) at it; it stops with the test.
func (e *env) otlpReceiver() *otlptest.Receiver {
	e.t.Helper()
	var httpLn net.Listener
	if err := e.lab.Do("lb", func() (err error) {
		httpLn, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	rcv := otlptest.Start(httpLn, nil)
	e.t.Cleanup(rcv.Close)
	e.daemonEnv = []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + httpLn.Addr().String(), "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"}
	return rcv
}

// sample finds the value of the metric in f whose labels include want.
func sample(f *dto.MetricFamily, want map[string]string) (float64, bool) {
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

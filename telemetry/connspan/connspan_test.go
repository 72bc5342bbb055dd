package connspan

import (
	"context"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mbx-net/mbx/monitor"
)

const corpus = "../../../shared/corpus"

func recorded(t *testing.T, path string, rate float64) ([]sdktrace.ReadOnlySpan, *monitor.Monitor) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	old := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	defer otel.SetTracerProvider(old)
	m := monitor.New(monitor.Options{})
	r, err := Attach(m, rate)
	if err != nil {
		t.Fatal(err)
	}
	if err := monitor.ReadFile(filepath.Join(corpus, path), m); err != nil {
		t.Skipf("corpus: %v", err)
	}
	tp.ForceFlush(context.Background())
	if r.Started != r.Ended {
		t.Errorf("%d spans started, %d ended", r.Started, r.Ended)
	}
	return exp.GetSpans().Snapshots(), m
}

// A complete HTTP session (tcpdump's print-flags capture) becomes one span
// with the connection's attributes, both sides' state changes and its end.
func TestConnectionSpan(t *testing.T) {
	spans, _ := recorded(t, "cases/t02-print-flags/print-flags.pcap", 1)
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	attrs := map[string]string{}
	for _, a := range s.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	if s.Name() != "mbx.conn" || attrs["mbx.end_reason"] != "fin" || attrs["mbx.server"] == "" ||
		attrs["mbx.stream_bytes"] != "[202,5559]" || attrs["mbx.client.state"] != "TIME_WAIT" {
		t.Errorf("span %s %v", s.Name(), attrs)
	}
	states := 0
	for _, ev := range s.Events() {
		if ev.Name == "state_change" {
			states++
		}
	}
	// SYN_SENT, SYN_RCVD, ESTABLISHED x2, FIN_WAIT_1, CLOSE_WAIT,
	// FIN_WAIT_2, LAST_ACK, TIME_WAIT, CLOSED: at least both handshakes'.
	if states < 8 || !s.EndTime().After(s.StartTime()) {
		t.Errorf("%d state changes, span %v..%v", states, s.StartTime(), s.EndTime())
	}
}

// Sampling keeps about rate of the connections, the same ones every time.
func TestSampling(t *testing.T) {
	const path = "cases/s03-syn-flood/" // 200 connections
	matches, _ := filepath.Glob(filepath.Join(corpus, path, "*.pcap*"))
	if len(matches) == 0 {
		t.Skip("corpus not present")
	}
	rel, _ := filepath.Rel(corpus, matches[0])
	all, m := recorded(t, rel, 1)
	if uint64(len(all)) != m.Stats().Conns {
		t.Fatalf("rate 1: %d spans for %d connections", len(all), m.Stats().Conns)
	}
	quarter, _ := recorded(t, rel, 0.25)
	again, _ := recorded(t, rel, 0.25)
	if n := len(quarter); n < len(all)/8 || n > len(all)/2 || n != len(again) {
		t.Errorf("rate 0.25: %d then %d spans of %d connections", n, len(again), len(all))
	}
	if _, err := Attach(monitor.New(monitor.Options{}), 0); err == nil {
		t.Error("rate 0 accepted")
	}
}

package telemetry

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/mbx-net/mbx/telemetry/otlptest"
)

func listen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// Spans reach an OTLP receiver over both protocols the environment selects.
func TestTracesOverOTLP(t *testing.T) {
	httpLn, grpcLn := listen(t), listen(t)
	rcv := otlptest.Start(httpLn, grpcLn)
	defer rcv.Close()
	for _, tc := range []struct{ protocol, endpoint, via string }{
		{"http/protobuf", "http://" + httpLn.Addr().String(), "http"},
		{"grpc", "http://" + grpcLn.Addr().String(), "grpc"},
	} {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tc.endpoint)
		t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tc.protocol)
		tel, err := Start(context.Background(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, span := otel.Tracer("test").Start(context.Background(), "op-"+tc.via, trace.WithAttributes(attribute.String("k", "v")))
		span.End()
		tel.Shutdown(context.Background())
		if _, ok := rcv.Wait(5*time.Second, func(s otlptest.Span) bool {
			return s.Name == "op-"+tc.via && s.Via == tc.via && s.Attrs["k"] == "v"
		}); !ok {
			t.Fatalf("%s: span not received; got %+v", tc.protocol, rcv.Spans())
		}
	}
}

func TestBadEnvironment(t *testing.T) {
	for _, tc := range []struct{ key, val, want string }{
		{"OTEL_TRACES_EXPORTER", "zipkin", "otlp, console and none"},
		{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "grpc or http/protobuf"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
			t.Setenv(tc.key, tc.val)
			_, err := Start(context.Background(), Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one naming %q", err, tc.want)
			}
		})
	}
}

// The Prometheus endpoint serves observable instruments in text format
// with HELP, as the Prometheus parser reads it.
func TestPrometheusEndpoint(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	tel, err := Start(context.Background(), Options{MetricsAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	m := otel.Meter("test")
	c, err := m.Int64ObservableCounter("mbx_test_things", metric.WithDescription("Things seen."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(c, 42, metric.WithAttributes(attribute.String("kind", "a")))
		return nil
	}, c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + tel.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("not Prometheus text: %v\n%s", err, body)
	}
	f, ok := fams["mbx_test_things_total"]
	if !ok || f.GetHelp() != "Things seen." || len(f.Metric) != 1 || f.Metric[0].GetCounter().GetValue() != 42 {
		t.Fatalf("mbx_test_things_total: %v\n%s", f, body)
	}
}

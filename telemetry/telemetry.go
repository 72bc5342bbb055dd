// Package telemetry sets up OpenTelemetry for the daemon: a MeterProvider
// read by a Prometheus endpoint (and pushed over OTLP when configured) and a
// TracerProvider exporting over OTLP gRPC or HTTP, or to stdout. It installs
// both as the otel globals, so the rest of mbx only uses the otel API.
//
// Environment, as the OpenTelemetry specification defines it:
// OTEL_EXPORTER_OTLP_ENDPOINT (or the _TRACES_/_METRICS_ variants) turns on
// OTLP export; OTEL_EXPORTER_OTLP_PROTOCOL (grpc or http/protobuf, the
// default); OTEL_TRACES_EXPORTER and OTEL_METRICS_EXPORTER (otlp, console
// for traces, none); OTEL_TRACES_SAMPLER(_ARG) and OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES are read by the SDK itself.
package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	promexp "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

// Options configure telemetry.
type Options struct {
	// MetricsAddr is host:port for the Prometheus endpoint (/metrics); ""
	// serves none.
	MetricsAddr string
	// Version is reported as service.version.
	Version string
	Logger  *slog.Logger
	// TracesOnly exports no metrics (a short-lived command's spans).
	TracesOnly bool
}

// Telemetry holds the providers and the metrics endpoint.
type Telemetry struct {
	mp   *sdkmetric.MeterProvider
	tp   *sdktrace.TracerProvider
	ln   net.Listener
	srv  *http.Server
	log  *slog.Logger
	addr string
}

// Start builds the providers from o and the environment and installs them
// as the otel globals. Nothing is started when neither a metrics address nor
// an exporter is configured, except the no-cost SDK providers.
func Start(ctx context.Context, o Options) (*Telemetry, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	t := &Telemetry{log: o.Logger}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName(serviceName()), semconv.ServiceVersion(o.Version)))
	if err != nil {
		return nil, err
	}

	var readers []sdkmetric.Option
	reg := prometheus.NewRegistry()
	if o.MetricsAddr != "" {
		exp, err := promexp.New(promexp.WithRegisterer(reg), promexp.WithoutScopeInfo(), promexp.WithoutUnits())
		if err != nil {
			return nil, fmt.Errorf("prometheus exporter: %w", err)
		}
		readers = append(readers, sdkmetric.WithReader(exp))
	}
	if me, err := metricExporter(ctx); err != nil {
		return nil, err
	} else if me != nil && !o.TracesOnly {
		readers = append(readers, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(me)))
	}
	t.mp = sdkmetric.NewMeterProvider(append(readers, sdkmetric.WithResource(res))...)

	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if te, err := traceExporter(ctx); err != nil {
		return nil, err
	} else if te != nil {
		topts = append(topts, sdktrace.WithBatcher(te, sdktrace.WithBatchTimeout(time.Second)))
	}
	t.tp = sdktrace.NewTracerProvider(topts...)
	otel.SetMeterProvider(t.mp)
	otel.SetTracerProvider(t.tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	if o.MetricsAddr != "" {
		ln, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			t.Shutdown(ctx)
			return nil, fmt.Errorf("--metrics-addr %s: %w", o.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{o.Logger}}))
		t.ln, t.addr = ln, ln.Addr().String()
		t.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go t.srv.Serve(ln)
	}
	return t, nil
}

// MetricsAddr is where the Prometheus endpoint listens ("" if nowhere).
func (t *Telemetry) MetricsAddr() string { return t.addr }

// Shutdown flushes exporters and stops the endpoint.
func (t *Telemetry) Shutdown(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if t.srv != nil {
		_ = t.srv.Shutdown(ctx)
	}
	if err := t.tp.Shutdown(ctx); err != nil {
		t.log.Warn("flushing traces", "err", err)
	}
	if err := t.mp.Shutdown(ctx); err != nil {
		t.log.Warn("flushing metrics", "err", err)
	}
}

func serviceName() string {
	if n := os.Getenv("OTEL_SERVICE_NAME"); n != "" {
		return n
	}
	return "mbx"
}

// otlpProtocol says whether kind ("TRACES" or "METRICS") goes over OTLP
// and with which protocol: grpc or http/protobuf (the spec's default).
// explicit is true when OTEL_*_EXPORTER names otlp, which then needs an
// endpoint.
func otlpProtocol(kind string, explicit bool) (string, bool, error) {
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_"+kind+"_ENDPOINT") == "" {
		if explicit {
			return "", false, fmt.Errorf("OTEL_%s_EXPORTER=otlp needs OTEL_EXPORTER_OTLP_ENDPOINT", kind)
		}
		return "", false, nil
	}
	p := os.Getenv("OTEL_EXPORTER_OTLP_" + kind + "_PROTOCOL")
	if p == "" {
		p = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch p {
	case "", "http/protobuf":
		return "http/protobuf", true, nil
	case "grpc":
		return "grpc", true, nil
	}
	return "", false, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: mbx exports grpc or http/protobuf", p)
}

func traceExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	switch e := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); e {
	case "none":
		return nil, nil
	case "console":
		return stdouttrace.New(stdouttrace.WithPrettyPrint())
	case "", "otlp":
		p, ok, err := otlpProtocol("TRACES", e == "otlp")
		switch {
		case err != nil || !ok:
			return nil, err
		case p == "grpc":
			return otlptracegrpc.New(ctx)
		}
		return otlptracehttp.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: mbx has otlp, console and none", e)
	}
}

func metricExporter(ctx context.Context) (sdkmetric.Exporter, error) {
	switch e := strings.TrimSpace(os.Getenv("OTEL_METRICS_EXPORTER")); e {
	case "none", "prometheus": // prometheus: the --metrics-addr endpoint only
		return nil, nil
	case "", "otlp":
		p, ok, err := otlpProtocol("METRICS", false)
		switch {
		case err != nil || !ok:
			return nil, err
		case p == "grpc":
			return otlpmetricgrpc.New(ctx)
		}
		return otlpmetrichttp.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_METRICS_EXPORTER=%q: mbx has otlp, prometheus and none", e)
	}
}

// slogPrinter lets promhttp log through slog.
type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.l.Warn("metrics endpoint", "err", fmt.Sprint(v...)) }

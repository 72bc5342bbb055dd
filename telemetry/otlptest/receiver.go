// Package otlptest is a minimal OTLP trace receiver (gRPC and HTTP/protobuf)
// built from the official proto packages, for tests that check what mbx
// exports.
package otlptest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Span is a received span, flattened for assertions.
type Span struct {
	Name    string
	Attrs   map[string]string
	Events  []string
	TraceID string
	Status  string // "", "error"
	Via     string // "grpc" or "http"
}

// Receiver collects spans sent to it.
type Receiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []Span
	http  *http.Server
	grpc  *grpc.Server
}

// Start serves OTLP/HTTP on httpLn and OTLP/gRPC on grpcLn (either may be nil).
func Start(httpLn, grpcLn net.Listener) *Receiver {
	r := &Receiver{}
	if httpLn != nil {
		mux := http.NewServeMux()
		mux.HandleFunc("POST /v1/traces", r.serveHTTP)
		r.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go r.http.Serve(httpLn)
	}
	if grpcLn != nil {
		r.grpc = grpc.NewServer()
		collectortrace.RegisterTraceServiceServer(r.grpc, r)
		go r.grpc.Serve(grpcLn)
	}
	return r
}

// Close stops both servers.
func (r *Receiver) Close() {
	if r.http != nil {
		r.http.Close()
	}
	if r.grpc != nil {
		r.grpc.Stop()
	}
}

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var msg collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &msg); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&msg, "http")
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

// Export implements the OTLP gRPC trace service.
func (r *Receiver) Export(_ context.Context, msg *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.add(msg, "grpc")
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (r *Receiver) add(msg *collectortrace.ExportTraceServiceRequest, via string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range msg.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				sp := Span{Name: s.Name, Attrs: attrs(s.Attributes), TraceID: fmt.Sprintf("%x", s.TraceId), Via: via}
				for _, ev := range s.Events {
					sp.Events = append(sp.Events, ev.Name)
				}
				if s.Status != nil && s.Status.Code == 2 {
					sp.Status = "error"
				}
				r.spans = append(r.spans, sp)
			}
		}
	}
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		v := kv.Value
		switch {
		case v == nil:
		case v.GetStringValue() != "":
			m[kv.Key] = v.GetStringValue()
		default:
			switch x := v.Value.(type) {
			case *commonpb.AnyValue_IntValue:
				m[kv.Key] = fmt.Sprint(x.IntValue)
			case *commonpb.AnyValue_BoolValue:
				m[kv.Key] = fmt.Sprint(x.BoolValue)
			case *commonpb.AnyValue_DoubleValue:
				m[kv.Key] = fmt.Sprint(x.DoubleValue)
			}
		}
	}
	return m
}

// Spans returns what was received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Wait returns the first span for which match is true, waiting up to timeout.
func (r *Receiver) Wait(timeout time.Duration, match func(Span) bool) (Span, bool) {
	deadline := time.Now().Add(timeout)
	for {
		for _, s := range r.Spans() {
			if match(s) {
				return s, true
			}
		}
		if time.Now().After(deadline) {
			return Span{}, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

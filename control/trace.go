package control

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/mbx-net/mbx/lb"
)

// tracer resolves the global provider at each use (telemetry.Start may run
// after this package is initialised).
var tracer = otel.GetTracerProvider().Tracer("github.com/mbx-net/mbx/control")

// opAttributes describe one configuration operation on its span.
func opAttributes(op lb.Op) []attribute.KeyValue {
	a := []attribute.KeyValue{attribute.String("mbx.op", string(op.Kind))}
	if op.Service.Addr.IsValid() {
		a = append(a, attribute.String("mbx.service", op.Service.String()))
	}
	if op.Scheduler != "" {
		a = append(a, attribute.String("mbx.scheduler", op.Scheduler))
	}
	if op.Real.Addr.IsValid() {
		a = append(a, attribute.String("mbx.real", op.Real.AddrPort().String()),
			attribute.Int("mbx.real.weight", op.Real.Weight), attribute.String("mbx.real.forward", string(op.Real.Forward)))
	}
	if op.Laddr.Addr.IsValid() {
		a = append(a, attribute.String("mbx.laddr", op.Laddr.Addr.String()))
	}
	return a
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Package health runs real-server health checks (TCP connect, HTTP/HTTPS GET
// with an expected status, UDP, an external command) from the mbx node and
// reports which real servers are up. rise/fall counts of consecutive results
// damp a flapping server; every transition is logged and counted.
package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/mbx-net/mbx/lb"
)

// Key names a checked real server within a service.
type Key struct {
	Service lb.ServiceKey
	Real    netip.AddrPort
}

// State is one real server's health.
type State struct {
	Up          bool   `json:"up"`
	Transitions int    `json:"transitions"`
	LastError   string `json:"last_error,omitempty"`
}

var tracer = otel.GetTracerProvider().Tracer("github.com/mbx-net/mbx/health")

// Monitor runs the checks the configuration asks for.
type Monitor struct {
	mu       sync.Mutex
	checks   map[Key]*checker
	onChange func()
	log      *slog.Logger
}

type checker struct {
	check  lb.Check
	proto  lb.Proto
	target netip.AddrPort
	cancel context.CancelFunc
	state  State
}

// New returns a monitor that calls onChange (in its own goroutine) when a
// real server goes up or down.
func New(log *slog.Logger, onChange func()) *Monitor {
	return &Monitor{checks: map[Key]*checker{}, onChange: onChange, log: log}
}

func defaults(c lb.Check) lb.Check {
	if c.Interval <= 0 {
		c.Interval = 3 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = min(c.Interval, 3*time.Second)
	}
	c.Retries = max(c.Retries, 1)
	c.Rise = max(c.Rise, 1)
	c.Fall = max(c.Fall, 1)
	if c.Status == 0 {
		c.Status = 200
	}
	if c.Path == "" {
		c.Path = "/"
	}
	return c
}

// Sync starts checks for real servers that gained one, stops those whose
// real server or check is gone, and restarts changed ones. A new check
// starts "up" (like keepalived), so adding a server does not drain it.
func (m *Monitor) Sync(cfg *lb.Config) {
	m.mu.Lock()
	defer m.mu.Unlock()
	want := map[Key]bool{}
	for _, s := range cfg.Services {
		for _, r := range s.Reals {
			if r.Check.Type == "" {
				continue
			}
			k := Key{s.Key, r.AddrPort()}
			want[k] = true
			c := defaults(r.Check)
			port := s.RealPort(r)
			if c.Port != 0 {
				port = c.Port
			}
			target := netip.AddrPortFrom(r.Addr, port)
			if old, ok := m.checks[k]; ok {
				if old.check == c && old.target == target {
					continue
				}
				old.cancel()
			}
			ctx, cancel := context.WithCancel(context.Background())
			ck := &checker{check: c, proto: s.Key.Proto, target: target, cancel: cancel, state: State{Up: true}}
			m.checks[k] = ck
			go m.run(ctx, k, ck)
		}
	}
	for k, c := range m.checks {
		if !want[k] {
			c.cancel()
			delete(m.checks, k)
		}
	}
}

// Up reports whether a real server is healthy (true when it has no check).
func (m *Monitor) Up(svc lb.ServiceKey, r netip.AddrPort) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.checks[Key{svc, r}]
	return !ok || c.state.Up
}

// States returns every checked real server's state.
func (m *Monitor) States() map[Key]State {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[Key]State{}
	for k, c := range m.checks {
		out[k] = c.state
	}
	return out
}

// Stop ends every check.
func (m *Monitor) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, c := range m.checks {
		c.cancel()
		delete(m.checks, k)
	}
}

func (m *Monitor) run(ctx context.Context, k Key, c *checker) {
	t := time.NewTicker(c.check.Interval)
	defer t.Stop()
	ok, bad := 0, 0
	for {
		err := attempt(ctx, c)
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		changed := false
		if err == nil {
			ok, bad = ok+1, 0
			c.state.LastError = ""
			if !c.state.Up && ok >= c.check.Rise {
				c.state.Up, changed = true, true
			}
		} else {
			ok, bad = 0, bad+1
			c.state.LastError = err.Error()
			if c.state.Up && bad >= c.check.Fall {
				c.state.Up, changed = false, true
			}
		}
		var span trace.Span
		if changed {
			c.state.Transitions++
			m.log.Warn("real server health changed", "service", k.Service.String(), "real", k.Real.String(),
				"up", c.state.Up, "check", c.check.Type, "err", c.state.LastError)
			// The span covers applying the change to the data plane.
			_, span = tracer.Start(ctx, "mbx.health.transition", trace.WithAttributes(
				attribute.String("mbx.service", k.Service.String()), attribute.String("mbx.real", k.Real.String()),
				attribute.Bool("mbx.health.up", c.state.Up), attribute.String("mbx.health.check", string(c.check.Type)),
				attribute.String("mbx.health.error", c.state.LastError), attribute.Int("mbx.health.transitions", c.state.Transitions)))
		}
		m.mu.Unlock()
		if changed {
			if m.onChange != nil {
				m.onChange()
			}
			span.End()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// attempt runs one check with its retries; nil means healthy.
func attempt(ctx context.Context, c *checker) error {
	var err error
	for i := 0; i < c.check.Retries; i++ {
		cctx, cancel := context.WithTimeout(ctx, c.check.Timeout)
		err = probe(cctx, c)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
	}
	return err
}

func probe(ctx context.Context, c *checker) error {
	addr := c.target.String()
	switch c.check.Type {
	case "tcp":
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	case "http", "https":
		tr := &http.Transport{DisableKeepAlives: true,
			// keepalived's SSL_GET does not verify certificates either.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec
		req, err := http.NewRequestWithContext(ctx, "GET", c.check.Type+"://"+addr+c.check.Path, nil)
		if err != nil {
			return err
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != c.check.Status {
			return fmt.Errorf("HTTP status %d, want %d", resp.StatusCode, c.check.Status)
		}
		return nil
	case "udp":
		// Healthy unless the host answers "port unreachable" (a reply or
		// silence both count as up, as keepalived's UDP_CHECK).
		conn, err := (&net.Dialer{}).DialContext(ctx, "udp", addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		deadline, _ := ctx.Deadline()
		conn.SetDeadline(deadline)
		if _, err := conn.Write([]byte("mbx health check\n")); err != nil {
			return err
		}
		buf := make([]byte, 512)
		_, err = conn.Read(buf)
		var ne net.Error
		if errors.Is(err, syscall.ECONNREFUSED) {
			return errors.New("port unreachable")
		}
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			return nil
		}
		return err
	case "misc":
		cmd := exec.CommandContext(ctx, "sh", "-c", c.check.Command)
		cmd.Env = append(cmd.Environ(), "MBX_REAL_ADDR="+c.target.Addr().String(), "MBX_REAL_PORT="+strconv.Itoa(int(c.target.Port())))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	return fmt.Errorf("unknown check %q", c.check.Type)
}

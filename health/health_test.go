package health

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mbx-net/mbx/lb"
)

func addrOf(t *testing.T, s string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func TestProbes(t *testing.T) {
	okSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			w.WriteHeader(503)
		}
	}))
	defer okSrv.Close()
	httpAddr := addrOf(t, okSrv.Listener.Addr().String())
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := addrOf(t, closed.Addr().String())
	closed.Close()
	udpOpen, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer udpOpen.Close()
	udpClosed, _ := net.ListenPacket("udp", "127.0.0.1:0")
	udpClosedAddr := addrOf(t, udpClosed.LocalAddr().String())
	udpClosed.Close()

	for _, tc := range []struct {
		name   string
		check  lb.Check
		target netip.AddrPort
		ok     bool
	}{
		{"tcp listening", lb.Check{Type: "tcp"}, httpAddr, true},
		{"tcp closed", lb.Check{Type: "tcp"}, closedAddr, false},
		{"http 200", lb.Check{Type: "http"}, httpAddr, true},
		{"http 503", lb.Check{Type: "http", Path: "/bad"}, httpAddr, false},
		{"http expects 503", lb.Check{Type: "http", Path: "/bad", Status: 503}, httpAddr, true},
		{"udp open", lb.Check{Type: "udp", Timeout: 200 * time.Millisecond}, addrOf(t, udpOpen.LocalAddr().String()), true},
		{"udp unreachable", lb.Check{Type: "udp", Timeout: 200 * time.Millisecond}, udpClosedAddr, false},
		{"misc true", lb.Check{Type: "misc", Command: "test \"$MBX_REAL_PORT\" != 0"}, httpAddr, true},
		{"misc false", lb.Check{Type: "misc", Command: "exit 3"}, httpAddr, false},
	} {
		c := &checker{check: defaults(tc.check), target: tc.target}
		err := attempt(context.Background(), c)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want healthy=%v", tc.name, err, tc.ok)
		}
	}
}

// The probes reach IPv6 real servers (bracketed host:port, URL host).
func TestProbesIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go srv.Serve(l)
	defer srv.Close()
	target := addrOf(t, l.Addr().String())
	for _, typ := range []string{"tcp", "http"} {
		c := &checker{check: defaults(lb.Check{Type: typ}), target: target}
		if err := attempt(context.Background(), c); err != nil {
			t.Errorf("%s check of %s: %v", typ, target, err)
		}
	}
}

// A server is taken down after Fall consecutive failures and brought back
// after Rise consecutive successes; each transition is counted once.
func TestRiseFall(t *testing.T) {
	var up atomic.Bool
	up.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.WriteHeader(500)
		}
	}))
	defer srv.Close()
	target := addrOf(t, srv.Listener.Addr().String())
	svc := lb.ServiceKey{Proto: lb.TCP, Addr: netip.MustParseAddr("198.18.0.100"), Port: 80}
	changes := make(chan bool, 10)
	var m *Monitor
	m = New(slog.New(slog.NewTextHandler(io.Discard, nil)), func() { changes <- m.Up(svc, target) })
	defer m.Stop()
	cfg := &lb.Config{Services: []*lb.Service{{Key: svc, Scheduler: "rr", Reals: []lb.Real{{
		Addr: target.Addr(), Port: target.Port(), Weight: 1, Forward: lb.FullNAT,
		Check: lb.Check{Type: "http", Interval: 20 * time.Millisecond, Fall: 3, Rise: 2},
	}}}}}
	m.Sync(cfg)
	if !m.Up(svc, target) {
		t.Fatal("a new check must start up")
	}
	up.Store(false)
	if got := waitChange(t, changes); got {
		t.Fatal("expected down")
	}
	up.Store(true)
	if got := waitChange(t, changes); !got {
		t.Fatal("expected up")
	}
	if st := m.States()[Key{svc, target}]; st.Transitions != 2 {
		t.Fatalf("transitions %d, want 2", st.Transitions)
	}
	// Removing the real server stops its check.
	cfg.Services[0].Reals = nil
	m.Sync(cfg)
	if len(m.States()) != 0 {
		t.Fatal("check still running after its real server was removed")
	}
}

func waitChange(t *testing.T, ch chan bool) bool {
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("no health change")
		return false
	}
}

package control

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/lb"
)

func TestParseConfigErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"syntax", "services:\n  - vip: [\n", "2:"},
		{"unknown field", "services:\n  - vip: 198.18.0.100:80\n    sched: rr\n", "3:"},
		{"bad vip", "services:\n  - vip: 198.18.0.100\n", "2: malformed address"},
		{"unknown scheduler", "services:\n  - vip: 198.18.0.100:80\n    scheduler: best\n", "3: unknown scheduler"},
		{"bad real", "services:\n  - vip: 198.18.0.100:80\n    reals:\n      - {addr: 198.18.1.2}\n      - {addr: nope}\n", "5: malformed address"},
		{"bad weight", "services:\n  - vip: 198.18.0.100:80\n    reals:\n      - {addr: 198.18.1.2, weight: 99999}\n", "4:"},
		{"duplicate service", "services:\n  - vip: 198.18.0.100:80\n  - vip: 198.18.0.100:80\n", "3: service TCP 198.18.0.100:80 already exists"},
		{"unknown protocol", "services:\n  - vip: 198.18.0.100:80\n    proto: sctp\n", "2: unknown protocol"},
		{"bad laddr", "services:\n  - vip: 198.18.0.100:80\n    laddrs:\n      - {addr: x, dev: lan0}\n", "4: malformed local address"},
		{"bad address", "addresses:\n  - {addr: 198.18.0.100, dev: wan0}\n", "2: malformed address"},
		{"maglev size not prime", "maglev: {size: 65536}\n", "1: maglev table size"},
	} {
		_, err := ParseConfig([]byte(tc.text))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want prefix %q", tc.name, err, tc.want)
		}
	}
}

func TestParseConfigGood(t *testing.T) {
	ops, err := ParseConfig([]byte(`
maglev: {size: 251, seed: 9}
addresses:
  - {addr: 198.18.0.100/32, dev: wan0}
services:
  - vip: 198.18.0.100:80
    scheduler: wrr
    reals:
      - {addr: 198.18.1.2, weight: 3}
      - {addr: "198.18.1.3:8080", forward: fnat}
    laddrs:
      - {addr: 198.18.1.200, dev: lan0}
  - proto: udp
    vip: 198.18.0.100:53
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(ops)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Maglev.Size != 251 || cfg.Maglev.Seed != 9 || len(cfg.Services) != 2 || len(cfg.Addresses) != 1 || cfg.Services[0].Reals[0].Weight != 3 || cfg.Services[0].Reals[1].Port != 8080 {
		t.Fatalf("config %+v", cfg.Services[0])
	}
	if _, err := LoadConfigFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
}

// fakeBackend records what it was asked to apply and can fail.
type fakeBackend struct {
	applied []*lb.Config
	fail    bool
}

func (f *fakeBackend) Apply(c *lb.Config) error {
	if f.fail {
		f.fail = false // the restore that follows succeeds
		return errors.New("datapath full")
	}
	f.applied = append(f.applied, c.Clone())
	return nil
}
func (f *fakeBackend) Snapshot() (*backend.Snapshot, error) { return &backend.Snapshot{}, nil }
func (f *fakeBackend) Conns(int) ([]backend.Conn, error)    { return nil, nil }
func (f *fakeBackend) Close() error                         { return nil }
func (f *fakeBackend) Handover() error                      { return nil }
func (f *fakeBackend) Adopted() int                         { return 0 }

func TestDaemonIsAllOrNothing(t *testing.T) {
	fb := &fakeBackend{}
	d := NewDaemon(fb, "fake", slog.New(slog.NewTextHandler(io.Discard, nil)))
	ops, _ := ParseConfig([]byte("services:\n  - vip: 198.18.0.100:80\n"))
	if err := d.Do(ops); err != nil {
		t.Fatal(err)
	}
	// A failing op in a batch: nothing applied.
	bad := []lb.Op{ops[0], ops[0]}
	if err := d.Do(bad); err == nil {
		t.Fatal("duplicate accepted")
	}
	if len(fb.applied) != 1 {
		t.Fatalf("backend saw %d applies, want 1", len(fb.applied))
	}
	// The backend refusing: the daemon keeps the old configuration and
	// puts the backend back.
	fb.fail = true
	more, _ := ParseConfig([]byte("services:\n  - vip: 198.18.0.101:80\n"))
	if err := d.Do(more); err == nil || !strings.Contains(err.Error(), "datapath full") {
		t.Fatalf("err %v", err)
	}
	if n := len(d.Config().Services); n != 1 {
		t.Fatalf("running config has %d services after a failed change", n)
	}
	if last := fb.applied[len(fb.applied)-1]; len(last.Services) != 1 {
		t.Fatalf("backend not restored: %d services", len(last.Services))
	}
}

func TestYAMLSNATMatch(t *testing.T) {
	ops, err := ParseConfig([]byte(`services:
  - match: proto=udp,src-range=198.18.1.0-198.18.1.254,oif=wan0
    scheduler: rr
    reals: [{addr: "198.18.0.1:0"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(ops)
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Services[0]; !s.Key.IsMatch() || s.Reals[0].Forward != lb.SNAT {
		t.Fatalf("%+v", s)
	}
	if _, err := ParseConfig([]byte("services:\n  - match: proto=tcp\n")); err == nil || !strings.HasPrefix(err.Error(), "2: ") {
		t.Errorf("a match without conditions: %v, want an error on line 2", err)
	}
}

// The YAML file's dpdk section: accepted beside the services, read apart.
func TestDPDKSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mbx.yaml")
	if err := os.WriteFile(path, []byte(`services:
  - {vip: 198.18.0.100:80, scheduler: rr, reals: [{addr: 198.18.1.2:80, forward: fnat}]}
dpdk:
  eal: "-l 0 --no-huge"
  ports: [net_af_xdp0=198.18.0.1/24]
  routes: [198.18.5.0/24=198.18.1.254]
  taps: [net_af_xdp0=mbxk0]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfigFile(path); err != nil {
		t.Fatal(err)
	}
	sec, err := LoadDPDKFile(path)
	if err != nil || sec == nil || sec.EAL != "-l 0 --no-huge" || len(sec.Ports) != 1 || sec.Routes[0] != "198.18.5.0/24=198.18.1.254" || sec.Taps[0] != "net_af_xdp0=mbxk0" {
		t.Fatalf("dpdk section %+v, %v", sec, err)
	}
}

// IPv6 and NAT64 services in the YAML file.
func TestYAMLIPv6(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mbx.yaml")
	if err := os.WriteFile(path, []byte(`services:
  - vip: "[fd00:198::a:100]:80"
    reals: [{addr: "[fd00:198::b:2]:80"}]
    laddrs: [{addr: "fd00:198::b:200", dev: lan0}]
  - vip: "[fd00:198::a:100]:8080"
    reals: [{addr: "198.18.1.2:80"}]
    laddrs: [{addr: 198.18.1.200, dev: lan0}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	ops, err := LoadConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(ops)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Services) != 2 || cfg.Services[0].IsNAT64() || !cfg.Services[1].IsNAT64() {
		t.Fatalf("services %+v", cfg.Services)
	}
}

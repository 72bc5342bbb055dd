package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Health checks from the mbx node: nginx stopped on rs2 takes rs2 out of
// rotation within interval x fall (inhibit_on_failure: weight 0 instead),
// and it comes back once nginx runs again.
func TestHealthChecks(t *testing.T) {
	need(t, "nginx", "curl")
	e := newEnv(t, "fnat-two-arm")
	e.nginx("rs1")
	e.nginx("rs2")
	cfg := filepath.Join(e.dir, "mbx.yaml")
	os.WriteFile(cfg, []byte(`
addresses:
  - {addr: 198.18.0.100/32, dev: wan0}
services:
  - vip: 198.18.0.100:80
    scheduler: rr
    reals:
      - {addr: 198.18.1.2, check: {type: tcp, interval: 300ms, timeout: 200ms, fall: 2, rise: 2}}
      - {addr: 198.18.1.3, check: {type: http, interval: 300ms, timeout: 200ms, fall: 2, rise: 2}}
    laddrs:
      - {addr: 198.18.1.200, dev: lan0}
  - vip: 198.18.0.100:8080
    scheduler: rr
    reals:
      - {addr: "198.18.1.2:80", check: {type: tcp, interval: 300ms, timeout: 200ms, fall: 2}}
      - {addr: "198.18.1.3:80", check: {type: tcp, interval: 300ms, timeout: 200ms, fall: 2}, inhibit_on_failure: true}
    laddrs:
      - {addr: 198.18.1.201, dev: lan0}
`), 0o644)
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--config", cfg)

	split := func(port string) map[string]int {
		return countFirstWords(e.curl("-H", "Connection: close", "http://"+vip+port+"/?[1-20]"))
	}
	if c := split(""); c["rs1"] != 10 || c["rs2"] != 10 {
		t.Fatalf("both healthy: %v", c)
	}
	waitListing := func(what string, cond func(string) bool) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			out := e.mustMbx("ipvsadm", "-ln")
			if cond(out) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not seen within 5 s:\n%s", what, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// Stop nginx on rs2.
	pid, _ := os.ReadFile(filepath.Join(e.dir, "nginx-rs2", "nginx.pid"))
	e.host("rs2", "kill", "-TERM", strings.TrimSpace(string(pid)))
	start := time.Now()
	waitListing("rs2 removed", func(out string) bool {
		return !strings.Contains(strings.Split(out, "TCP  198.18.0.100:8080")[0], "198.18.1.3:80")
	})
	t.Logf("rs2 removed %v after nginx stopped (interval 300ms x fall 2)", time.Since(start).Round(10*time.Millisecond))
	waitListing("rs2 inhibited", func(out string) bool {
		svc8080 := strings.Split(out, "TCP  198.18.0.100:8080")[1]
		return strings.Contains(svc8080, "198.18.1.3:80                FullNat 0")
	})
	if c := split(""); c["rs1"] != 20 {
		t.Fatalf("rs2 down, yet: %v", c)
	}
	if c := split(":8080"); c["rs1"] != 20 {
		t.Fatalf("rs2 inhibited, yet: %v", c)
	}

	// nginx back on rs2: it returns after rise successes.
	e.nginx("rs2")
	waitListing("rs2 back", func(out string) bool {
		return strings.Contains(strings.Split(out, "TCP  198.18.0.100:8080")[0], "198.18.1.3:80")
	})
	if c := split(""); c["rs1"] != 10 || c["rs2"] != 10 {
		t.Fatalf("rs2 back, yet: %v", c)
	}
	// The desired state never changed: -S still has both at weight 1.
	if s := e.mustMbx("ipvsadm", "-S", "-n"); strings.Count(s, "-w 1") != 4 {
		t.Fatalf("-S changed by health checks:\n%s", s)
	}
}

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Three real servers under wlc and mh with wrk running: nginx stopped on
// one takes it out of new connections within interval x fall, and it comes
// back after nginx restarts.
func TestSchedulersWithHealthUnderLoad(t *testing.T) {
	need(t, "nginx", "curl", "wrk")
	e := newEnv(t, "fnat-two-arm")
	for _, h := range []string{"rs1", "rs2", "rs3"} {
		e.nginx(h)
	}
	reals := ""
	for _, a := range []string{"198.18.1.2", "198.18.1.3", "198.18.1.4"} {
		reals += `      - {addr: "` + a + `:80", check: {type: tcp, interval: 300ms, timeout: 200ms, fall: 2, rise: 2}}` + "\n"
	}
	cfg := filepath.Join(e.dir, "mbx.yaml")
	os.WriteFile(cfg, []byte(`
addresses:
  - {addr: 198.18.0.100/32, dev: wan0}
services:
  - vip: 198.18.0.100:80
    scheduler: wlc
    reals:
`+reals+`    laddrs:
      - {addr: 198.18.1.200, dev: lan0}
  - vip: 198.18.0.100:8080
    scheduler: mh
    reals:
`+reals+`    laddrs:
      - {addr: 198.18.1.201, dev: lan0}
`), 0o644)
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--config", cfg)
	wrk := e.lab.Command("client", "wrk", "-t1", "-c8", "-d6s", "http://"+vip+"/")
	if err := wrk.Start(); err != nil {
		t.Fatal(err)
	}
	defer wrk.Wait()

	split := func(port string) map[string]int {
		return countFirstWords(e.curl("-H", "Connection: close", "http://"+vip+port+"/?[1-60]"))
	}
	for _, port := range []string{"", ":8080"} {
		if c := split(port); c["rs1"] == 0 || c["rs2"] == 0 || c["rs3"] == 0 {
			t.Fatalf("service %s: not all three used: %v", port, c)
		}
	}
	pid, _ := os.ReadFile(filepath.Join(e.dir, "nginx-rs3", "nginx.pid"))
	e.host("rs3", "kill", "-TERM", strings.TrimSpace(string(pid)))
	time.Sleep(900 * time.Millisecond) // interval 300ms x fall 2, plus a check's timeout
	for _, port := range []string{"", ":8080"} {
		if c := split(port); c["rs3"] != 0 || c["rs1"]+c["rs2"] != 60 {
			t.Fatalf("service %s after rs3 stopped: %v", port, c)
		}
	}
	e.nginx("rs3")
	time.Sleep(900 * time.Millisecond) // rise 2
	for _, port := range []string{"", ":8080"} {
		if c := split(port); c["rs3"] == 0 {
			t.Fatalf("service %s: rs3 did not come back: %v", port, c)
		}
	}
}

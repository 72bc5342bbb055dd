package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const reloadBase = `
addresses:
  - {addr: 198.18.0.100/32, dev: wan0}
services:
  - vip: 198.18.0.100:80
    scheduler: %s
    reals:
%s    laddrs:
      - {addr: 198.18.1.200, dev: lan0}
`

func reloadConfig(sched string, reals ...string) string {
	var b strings.Builder
	for _, r := range reals {
		b.WriteString("      - " + r + "\n")
	}
	return strings.Replace(strings.Replace(reloadBase, "%s", sched, 1), "%s", b.String(), 1)
}

// Reload under wrk load: change weights, remove a real server, add it back,
// by `mbx reload` and by SIGHUP; no request fails. An invalid file is
// refused with file:line and changes nothing.
func TestReloadUnderLoad(t *testing.T) {
	need(t, "nginx", "wrk", "curl")
	e := newEnv(t, "fnat-two-arm")
	e.nginx("rs1")
	e.nginx("rs2")
	cfg := filepath.Join(e.dir, "mbx.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfg, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(reloadConfig("wrr", "{addr: 198.18.1.2, weight: 1}", "{addr: 198.18.1.3, weight: 1}"))
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--config", cfg)

	wrk := e.lab.Command("client", "wrk", "-t2", "-c16", "-d8s", "http://"+vip+"/")
	var wrkOut strings.Builder
	wrk.Stdout, wrk.Stderr = &wrkOut, &wrkOut
	if err := wrk.Start(); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		cfg    string
		signal bool
	}{
		{reloadConfig("wrr", "{addr: 198.18.1.2, weight: 3}", "{addr: 198.18.1.3, weight: 1}"), false},
		{reloadConfig("wrr", "{addr: 198.18.1.2, weight: 3}"), true},
		{reloadConfig("wrr", "{addr: 198.18.1.2, weight: 3}", "{addr: 198.18.1.3, weight: 2}"), false},
	}
	for _, st := range steps {
		time.Sleep(1500 * time.Millisecond)
		write(st.cfg)
		if st.signal {
			if err := e.daemon.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
		} else {
			e.mustMbx("reload")
		}
	}
	saved := e.mustMbx("ipvsadm", "-S", "-n")
	if !strings.Contains(saved, "-r 198.18.1.3:80 -b -w 2") || !strings.Contains(saved, "-r 198.18.1.2:80 -b -w 3") {
		t.Fatalf("after the reloads:\n%s", saved)
	}

	// An invalid file: refused with file:line, nothing changes.
	write(reloadConfig("wrr", "{addr: 198.18.1.2, weight: 3}", "{addr: 198.18.1.999}"))
	out, err := e.mbx("reload")
	oneLineError(t, out, err, "mbx.yaml:")
	if again := e.mustMbx("ipvsadm", "-S", "-n"); again != saved {
		t.Fatalf("a refused reload changed the configuration:\n%s", again)
	}

	if err := wrk.Wait(); err != nil {
		t.Fatalf("wrk: %v\n%s", err, wrkOut.String())
	}
	t.Logf("%s", wrkOut.String())
	wrkClean(t, wrkOut.String())
	// New connections follow the reloaded weights (3:2 over 500).
	c := countFirstWords(e.curl("-H", "Connection: close", "http://"+vip+"/?[1-500]"))
	if c["rs1"] != 300 || c["rs2"] != 200 {
		t.Fatalf("split after reload %v, want 300/200", c)
	}
}

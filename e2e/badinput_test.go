package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// oneLineError checks that a failed mbx command printed exactly one line.
// refused runs `mbx ARGS`, which must fail with one line containing want
// and leave the configuration (ipvsadm -Sn) as it was.
func (e *env) refused(want string, args ...string) {
	e.t.Helper()
	before := e.mustMbx("ipvsadm", "-Sn")
	out, err := e.mbx(args...)
	oneLineError(e.t, out, err, want)
	if after := e.mustMbx("ipvsadm", "-Sn"); after != before {
		e.t.Errorf("a refused command changed the configuration:\n%s\n%s", before, after)
	}
}

func oneLineError(t *testing.T, out string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded, want an error containing %q: %s", want, out)
	}
	if n := strings.Count(strings.TrimRight(out, "\n"), "\n"); n != 0 {
		t.Fatalf("error is %d lines, want one:\n%s", n+1, out)
	}
	if !strings.Contains(out, want) {
		t.Fatalf("error %q does not mention %q", strings.TrimSpace(out), want)
	}
}

func TestBadInput(t *testing.T) {
	need(t, "nginx", "curl")
	e, _ := twoArm(t)
	before := e.mustMbx("ipvsadm", "-S", "-n")

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"malformed address", []string{"ipvsadm", "-A", "-t", "198.18.0:80", "-s", "rr"}, "malformed address"},
		{"unknown scheduler", []string{"ipvsadm", "-A", "-t", "198.18.0.101:80", "-s", "fastest"}, "unknown scheduler"},
		{"duplicate service", []string{"ipvsadm", "-A", "-t", "198.18.0.100:80", "-s", "rr"}, "already exists"},
		{"real server for a missing service", []string{"ipvsadm", "-a", "-t", "198.18.0.101:80", "-r", "198.18.1.2", "-b"}, "does not exist"},
		{"LIP on a missing device", []string{"ipvsadm", "--add-laddr", "-z", "198.18.1.210", "-t", "198.18.0.100:80", "-F", "nosuch0"}, "nosuch0"},
		{"SNAT without a match", []string{"ipvsadm", "-a", "-t", "198.18.0.100:80", "-r", "198.18.1.4", "-J"}, "needs a match service"},
		{"bad weight", []string{"ipvsadm", "-a", "-t", "198.18.0.100:80", "-r", "198.18.1.4", "-b", "-w", "x"}, "illegal weight"},
		{"unknown option", []string{"ipvsadm", "-A", "--frobnicate"}, "unknown option"},
		{"no command", []string{"ipvsadm", "-t", "198.18.0.100:80"}, "no command"},
		{"bad addr", []string{"addr", "add", "198.18.0.300/32", "dev", "wan0"}, "malformed address"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := e.mbx(c.args...)
			oneLineError(t, out, err, c.want)
			if after := e.mustMbx("ipvsadm", "-S", "-n"); after != before {
				t.Fatalf("configuration changed:\n%s\nwas:\n%s", after, before)
			}
		})
	}

	t.Run("restore with a bad line applies nothing", func(t *testing.T) {
		cmd := e.lab.Command("lb", mbxBin, "ipvsadm", "-R")
		cmd.Env = append(os.Environ(), "MBX_SOCKET="+e.socket)
		cmd.Stdin = strings.NewReader("-A -t 198.18.0.102:80 -s rr\n-A -t 198.18.0.103:80 -s nope\n")
		out, err := cmd.CombinedOutput()
		oneLineError(t, string(out), err, "line 2")
		if after := e.mustMbx("ipvsadm", "-S", "-n"); after != before {
			t.Fatalf("configuration changed:\n%s", after)
		}
	})

	t.Run("daemon not running", func(t *testing.T) {
		cmd := exec.Command(mbxBin, "ipvsadm", "-ln")
		cmd.Env = append(os.Environ(), "MBX_SOCKET="+filepath.Join(e.dir, "none.sock"))
		out, err := cmd.CombinedOutput()
		oneLineError(t, string(out), err, "not running")
	})
}

// TestRunFailures: mbx run refuses cleanly and leaves nothing behind.
func TestRunFailures(t *testing.T) {
	need(t, "ethtool")
	e := newEnv(t, "fnat-two-arm")
	checkXDP := true
	run := func(args ...string) (string, error) {
		sock := filepath.Join(e.dir, "fail.sock")
		out, err := e.lab.Command("lb", mbxBin, append([]string{"run", "--socket", sock}, args...)...).CombinedOutput()
		if _, serr := os.Stat(sock); serr == nil {
			t.Errorf("socket %s left behind", sock)
		}
		if x, _ := e.lab.Run("lb", "ip", "link", "show"); checkXDP && strings.Contains(x, "xdp") {
			t.Errorf("XDP left attached:\n%s", x)
		}
		return string(out), err
	}
	bad := filepath.Join(e.dir, "bad.yaml")
	os.WriteFile(bad, []byte("services:\n  - vip: 198.18.0.100:80\n    scheduler: rr\n    reals:\n      - {addr: 198.18.1.999, weight: 1}\n"), 0o644)
	dup := filepath.Join(e.dir, "dup.yaml")
	os.WriteFile(dup, []byte("services:\n  - vip: 198.18.0.100:80\n  - vip: 198.18.0.100:80\n"), 0o644)
	syn := filepath.Join(e.dir, "syntax.yaml")
	os.WriteFile(syn, []byte("services:\n  - vip: [\n"), 0o644)

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"interface that does not exist", []string{"--iface", "nosuch0"}, "nosuch0"},
		{"no interface", nil, "no interface"},
		{"bad address in config", []string{"--iface", "wan0", "--config", bad}, "bad.yaml:5"},
		{"duplicate service in config", []string{"--iface", "wan0", "--config", dup}, "dup.yaml:3"},
		{"syntax error in config", []string{"--iface", "wan0", "--config", syn}, "syntax.yaml:"},
		{"unknown backend", []string{"--backend", "nope", "--iface", "wan0"}, "unknown backend"},
		{"dpdk in a binary without it", []string{"--backend", "dpdk", "--iface", "wan0"}, "make build-dpdk"},
		{"bad xdp mode", []string{"--iface", "wan0", "--xdp-mode", "turbo"}, "xdp-mode"},
		{"monitor on an interface that does not exist", []string{"--iface", "wan0", "--monitor", "nosuch0"}, "nosuch0"},
		{"bad monitor filter", []string{"--iface", "wan0", "--monitor", "lan0", "--monitor-filter", "tcp port"}, "--monitor-filter"},
		{"monitor filter without a monitor", []string{"--iface", "wan0", "--monitor-filter", "tcp"}, "need --monitor"},
		{"unwritable monitor log", []string{"--iface", "wan0", "--monitor", "lan0", "--monitor-log", "/proc/nope/log"}, "--monitor-log"},
		{"connection traces without a monitor", []string{"--iface", "wan0", "--trace-conns", "0.5"}, "need --monitor"},
		{"connection trace rate out of range", []string{"--iface", "wan0", "--monitor", "lan0", "--trace-conns", "2"}, "--trace-conns"},
		{"monitor sample out of range", []string{"--iface", "wan0", "--monitor", "lan0", "--monitor-sample", "1"}, "--monitor-sample"},
		{"monitor sample inline", []string{"--inline", "wan0:lan0", "--monitor-sample", "0.5"}, "passive monitor"},
		{"inline pair without its peer", []string{"--inline", "wan0"}, "want IF1:IF2"},
		{"inline interface paired with itself", []string{"--inline", "wan0:wan0"}, "its own peer"},
		{"inline interface in two pairs", []string{"--inline", "wan0:lan0", "--inline", "lan0:wan0"}, "already in a pair"},
		{"inline and passive monitor at once", []string{"--inline", "wan0:lan0", "--monitor", "wan0"}, "passive or inline"},
		{"inline on an interface that does not exist", []string{"--inline", "wan0:nosuch0"}, "nosuch0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := run(c.args...)
			oneLineError(t, out, err, c.want)
		})
	}

	t.Run("interface that already has an XDP program", func(t *testing.T) {
		e.startDaemon("--iface", "lan0")
		checkXDP = false // the first daemon's program is on lan0
		out, err := run("--iface", "wan0", "--iface", "lan0")
		checkXDP = true
		e.stopDaemon()
		if x, _ := e.lab.Run("lb", "ip", "link", "show"); strings.Contains(x, "xdp") {
			t.Fatalf("XDP left attached after both stopped:\n%s", x)
		}
		oneLineError(t, out, err, "already has an XDP program")
	})

	t.Run("without BPF rights", func(t *testing.T) {
		if _, err := exec.LookPath("setpriv"); err != nil {
			t.Skip("setpriv missing")
		}
		sock := filepath.Join(e.dir, "nobody.sock")
		out, err := e.lab.Command("lb", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
			mbxBin, "run", "--iface", "wan0", "--socket", sock).CombinedOutput()
		oneLineError(t, string(out), err, "")
		if !strings.Contains(string(out), "permission") && !strings.Contains(string(out), "not permitted") {
			t.Fatalf("error does not say it is about rights: %s", out)
		}
		if _, serr := os.Stat(sock); serr == nil {
			t.Fatal("socket left behind")
		}
	})

	t.Run("two instances with their own sockets and interfaces", func(t *testing.T) {
		a := filepath.Join(e.dir, "a.sock")
		b := filepath.Join(e.dir, "b.sock")
		ca := e.lab.Command("lb", mbxBin, "run", "--iface", "wan0", "--socket", a)
		cb := e.lab.Command("lb", mbxBin, "run", "--iface", "lan0", "--socket", b)
		for _, c := range []*exec.Cmd{ca, cb} {
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			defer func(c *exec.Cmd) { c.Process.Signal(os.Interrupt); c.Wait() }(c)
		}
		e.socket = a
		waitFile(t, a)
		waitFile(t, b)
		e.mustMbx("ipvsadm", "-A", "-t", "198.18.0.100:80", "-s", "rr")
		e.socket = b
		if out := e.mustMbx("ipvsadm", "-S", "-n"); strings.TrimSpace(out) != "" {
			t.Fatalf("instance b sees instance a's service: %s", out)
		}
		e.socket = a
		if out := e.mustMbx("ipvsadm", "-S", "-n"); !strings.Contains(out, "198.18.0.100:80") {
			t.Fatalf("instance a lost its service: %s", out)
		}
		// A second daemon on a live socket is refused.
		out, err := e.lab.Command("lb", mbxBin, "run", "--iface", "wan0", "--socket", a).CombinedOutput()
		oneLineError(t, string(out), err, "")
		// Stopping one instance leaves forwarding on for the other.
		ca.Process.Signal(os.Interrupt)
		ca.Wait()
		if v := strings.TrimSpace(e.host("lb", "cat", "/proc/sys/net/ipv4/ip_forward")); v != "1" {
			t.Fatalf("ip_forward is %s after one of two instances stopped", v)
		}
	})
}

func waitFile(t *testing.T, p string) {
	t.Helper()
	waitFor(t, 10*time.Second, func() bool { _, err := os.Stat(p); return err == nil }, p+" to appear")
}

// Package e2e runs mbx end to end: real clients (curl, wrk, iperf3) talk
// through `mbx run` to real servers (nginx) in lab namespaces.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mbx-net/mbx/lab"
)

var mbxBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped, needs root")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "mbx-e2e-bin")
	if err != nil {
		panic(err)
	}
	mbxBin = filepath.Join(dir, "mbx")
	if out, err := exec.Command("go", "build", "-o", mbxBin, "../cmd/mbx").CombinedOutput(); err != nil {
		fmt.Printf("building mbx: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func need(t *testing.T, tools ...string) {
	for _, x := range tools {
		if _, err := exec.LookPath(x); err != nil {
			t.Fatalf("%s is not installed (scripts/setup.sh installs it)", x)
		}
	}
}

// env is one lab with an mbx daemon in its lb host.
type env struct {
	t      *testing.T
	lab    *lab.Lab
	dir    string
	socket string
	daemon *exec.Cmd
	log    string
	// daemonEnv is added to the daemon's environment (OTEL_* variables).
	daemonEnv []string
}

// newEnv builds topology topo (owned by this test process) and returns it;
// everything is removed at the test's end, and stale labs of dead test
// processes are removed first.
func newEnv(t *testing.T, topo string) *env {
	tp, err := lab.Lookup(topo)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.NewReplacer("/", "", "_", "").Replace(strings.ToLower(t.Name()))
	if len(name) > 12 {
		name = name[:12]
	}
	l, err := lab.Up(tp, name, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, lab: l, dir: t.TempDir()}
	e.socket = filepath.Join(e.dir, "mbx.sock")
	t.Cleanup(func() {
		e.stopDaemon()
		l.Down()
	})
	return e
}

// host runs a command in a lab host, failing the test on error.
func (e *env) host(h string, name string, args ...string) string {
	e.t.Helper()
	out, err := e.lab.Run(h, name, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// mbx runs the mbx binary in the lb host against this env's daemon.
func (e *env) mbx(args ...string) (string, error) {
	cmd := e.lab.Command("lb", mbxBin, args...)
	cmd.Env = append(os.Environ(), "MBX_SOCKET="+e.socket)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *env) mustMbx(args ...string) string {
	e.t.Helper()
	out, err := e.mbx(args...)
	if err != nil {
		e.t.Fatalf("mbx %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// ipvsadm runs each line as `mbx ipvsadm LINE`.
func (e *env) ipvsadm(lines string) {
	e.t.Helper()
	for _, l := range strings.Split(strings.TrimSpace(lines), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			e.mustMbx(append([]string{"ipvsadm"}, strings.Fields(l)...)...)
		}
	}
}

// startDaemon runs `mbx run` in the lb host and waits for its socket.
func (e *env) startDaemon(args ...string) {
	e.t.Helper()
	e.log = filepath.Join(e.dir, "mbx.log")
	logf, err := os.Create(e.log)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := e.lab.Command("lb", mbxBin, append([]string{"run", "--socket", e.socket}, args...)...)
	cmd.Env = append(os.Environ(), e.daemonEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.daemon = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(e.socket); err == nil {
			return
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(e.log)
	e.t.Fatalf("mbx run did not come up: %s", b)
}

func (e *env) stopDaemon() {
	if e.daemon == nil || e.daemon.Process == nil {
		return
	}
	_ = e.daemon.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { e.daemon.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		e.daemon.Process.Kill()
		<-done
	}
	e.daemon = nil
}

// filesDir is the directory every real server's nginx serves under /files/.
func (e *env) filesDir() string {
	d := filepath.Join(e.dir, "files")
	if err := os.MkdirAll(d, 0o755); err != nil {
		e.t.Fatal(err)
	}
	return d
}

// nginx starts nginx in host answering "NAME CLIENTIP:PORT" on / and serving
// filesDir under /files/.
func (e *env) nginx(h string) {
	files := e.filesDir()
	e.t.Helper()
	d := filepath.Join(e.dir, "nginx-"+h)
	for _, sub := range []string{"", "tmp"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`user root;
worker_processes 2;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path %[1]s/tmp; proxy_temp_path %[1]s/tmp; fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp; scgi_temp_path %[1]s/tmp;
  keepalive_requests 1000000;
  server {
    listen 80 backlog=4096;
    listen [::]:80 backlog=4096;
    location = / { default_type text/plain; return 200 "%[2]s $remote_addr:$remote_port\n"; }
    location /files/ { alias %[3]s/; }
  }
}
`, d, h, files)
	cf := filepath.Join(d, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		e.t.Fatal(err)
	}
	cmd := e.lab.Command(h, "nginx", "-c", cf, "-p", d)
	out := filepath.Join(d, "stdout")
	of, _ := os.Create(out)
	cmd.Stdout, cmd.Stderr = of, of
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	e.waitTCP(h, "127.0.0.1:80")
}

// background starts a long-running command in host, killed at cleanup.
func (e *env) background(h string, name string, args ...string) {
	cmd := e.lab.Command(h, name, args...)
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

func (e *env) waitTCP(h, addr string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if _, err := e.lab.Run(h, "bash", "-c", "exec 3<>/dev/tcp/"+strings.Replace(addr, ":", "/", 1)); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("nothing listens on %s in %s", addr, h)
}

// iperfResult is the part of iperf3 -J output the tests read.
type iperfResult struct {
	End struct {
		SumSent struct {
			Bytes float64 `json:"bytes"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct { // UDP
			Packets     int     `json:"packets"`
			LostPercent float64 `json:"lost_percent"`
		} `json:"sum"`
	} `json:"end"`
	Error string `json:"error"`
}

// parseIperf fails the test unless out is a successful iperf3 -J report.
func parseIperf(t *testing.T, out string) iperfResult {
	t.Helper()
	var r iperfResult
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Error != "" {
		t.Fatalf("iperf3: %v %s", err, r.Error)
	}
	return r
}

// wrkClean fails the test when wrk reports failed requests.
func wrkClean(t *testing.T, out string) {
	t.Helper()
	if strings.Contains(out, "Socket errors") || strings.Contains(out, "Non-2xx") {
		t.Fatalf("wrk saw failed requests:\n%s", out)
	}
}

// countLines counts lines by their first word.
func countFirstWords(out string) map[string]int {
	m := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			m[f[0]]++
		}
	}
	return m
}

package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Restart and upgrade without loss: with state pinned on a bpffs, `mbx stop
// --keep-datapath` (and SIGUSR2) leave the datapath forwarding; the next
// `mbx run` takes the links over atomically and restores its configuration.
// wrk and long iperf3 transfers, IPv4 and IPv6, run across two restarts
// (the second one a different binary file) without a failed request and
// with the transfers complete.
func TestRestartWithoutLoss(t *testing.T) {
	need(t, "nginx", "wrk", "iperf3", "curl")
	e, _ := twoArmNoDaemon(t)
	// A bpffs on the host, visible inside `ip netns exec` (mounts made by
	// the daemon there would vanish with it).
	bpffs := filepath.Join("/run", fmt.Sprintf("mbx-e2e-bpf-%d", os.Getpid()))
	if err := os.MkdirAll(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting bpffs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(bpffs, syscall.MNT_DETACH); os.Remove(bpffs) })
	pin := filepath.Join(bpffs, "lb")
	upgraded := filepath.Join(e.dir, "mbx-new")
	copyFile(t, mbxBin, upgraded)

	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--pin-dir", pin)
	e.mustMbx("addr", "add", vip+"/32", "dev", "wan0")
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		-a -t 198.18.0.100:80 -r 198.18.1.3 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0
		-A -t 198.18.0.100:5201 -s rr
		-a -t 198.18.0.100:5201 -r 198.18.1.2 -b
		--add-laddr -z 198.18.1.201 -t 198.18.0.100:5201 -F lan0
		-A -t [fd00:198::a:100]:5202 -s rr
		-a -t [fd00:198::a:100]:5202 -r [fd00:198::b:2] -b
		--add-laddr -z fd00:198::b:200 -t [fd00:198::a:100]:5202 -F lan0`)
	e.mustMbx("addr", "add", vip6+"/128", "dev", "wan0")
	e.background("rs1", "iperf3", "-s", "-p", "5201")
	e.background("rs1", "iperf3", "-s", "-p", "5202")
	e.waitTCP("rs1", "127.0.0.1:5201")
	e.waitTCP("rs1", "127.0.0.1:5202")
	before := e.mustMbx("ipvsadm", "-S", "-n")

	wrk := e.lab.Command("client", "wrk", "-t2", "-c16", "-d10s", "http://"+vip+"/")
	var wrkOut strings.Builder
	wrk.Stdout, wrk.Stderr = &wrkOut, &wrkOut
	iperf := e.lab.Command("client", "iperf3", "-c", vip, "-t", "9", "-J")
	var iperfOut strings.Builder
	iperf.Stdout = &iperfOut
	// An IPv6 transfer too: its connection lives in conns6, pinned as well.
	iperf6 := e.lab.Command("client", "iperf3", "-c", vip6, "-p", "5202", "-t", "9", "-J")
	var iperf6Out strings.Builder
	iperf6.Stdout = &iperf6Out
	for _, c := range []interface{ Start() error }{wrk, iperf, iperf6} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}

	restart := func(how string, bin string) {
		e.handOver(how)
		// Nothing of mbx runs now; the datapath must still be attached.
		if out, _ := e.lab.Run("lb", "ip", "link", "show", "wan0"); !strings.Contains(out, "xdp") {
			t.Fatalf("datapath detached by a keep-datapath stop:\n%s", out)
		}
		time.Sleep(500 * time.Millisecond)
		saved := mbxBin
		mbxBin = bin
		e.startDaemon("--iface", "wan0", "--iface", "lan0", "--pin-dir", pin)
		mbxBin = saved
		if got := e.mustMbx("ipvsadm", "-S", "-n"); got != before {
			t.Fatalf("configuration after restart:\n%s\nwant:\n%s", got, before)
		}
	}
	// The VIP and LIPs mbx added: kept across a handover, removed by the
	// daemon that took over when it stops for good.
	mbxAddrs := []string{vip + "/32", "198.18.1.200/32", "198.18.1.201/32"}
	addrsPresent := func(want bool) {
		t.Helper()
		out, _ := e.lab.Run("lb", "ip", "-4", "addr", "show")
		for _, a := range mbxAddrs {
			if strings.Contains(out, "inet "+a+" ") != want {
				t.Fatalf("address %s present=%v, want %v:\n%s", a, !want, want, out)
			}
		}
	}
	addrsPresent(true)
	restart("stop", mbxBin)
	restart("usr2", upgraded)
	addrsPresent(true)

	wrkDone(t, wrk, &wrkOut)
	iperfDone(t, iperf, &iperfOut, "iperf3")
	iperfDone(t, iperf6, &iperf6Out, "iperf3 over IPv6")

	// --fresh discards the pinned state.
	e.stopDaemon()
	addrsPresent(false)
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--pin-dir", pin, "--fresh")
	if got := e.mustMbx("ipvsadm", "-S", "-n"); strings.TrimSpace(got) != "" {
		t.Fatalf("--fresh kept: %s", got)
	}
}

// handOver stops the daemon, two seconds into the traffic, so that the
// next one takes over: `mbx stop --keep-datapath` (how "stop") or SIGUSR2.
func (e *env) handOver(how string) {
	time.Sleep(2 * time.Second)
	if how == "stop" {
		e.mustMbx("stop", "--keep-datapath")
	} else {
		e.daemon.Process.Signal(syscall.SIGUSR2)
	}
	e.daemon.Wait()
	e.daemon = nil
}

// wrkDone waits for a wrk run across restarts: no failed request.
func wrkDone(t *testing.T, wrk *exec.Cmd, out *strings.Builder) {
	t.Helper()
	if err := wrk.Wait(); err != nil {
		t.Fatalf("wrk: %v", err)
	}
	t.Logf("%s", out.String())
	wrkClean(t, out.String())
}

// iperfDone waits for an iperf3 transfer across restarts: it completed.
func iperfDone(t *testing.T, iperf *exec.Cmd, out *strings.Builder, what string) {
	t.Helper()
	if err := iperf.Wait(); err != nil {
		t.Fatalf("%s across restarts: %v\n%s", what, err, out.String())
	}
	r := parseIperf(t, out.String())
	if r.End.SumSent.Bytes == 0 {
		t.Fatalf("%s sent nothing", what)
	}
	t.Logf("%s sent %.0f MB across two restarts", what, r.End.SumSent.Bytes/1e6)
}

func copyFile(t *testing.T, from, to string) {
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
}

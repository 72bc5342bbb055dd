package e2e

import (
	"fmt"
	"io"
	"os"
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
		time.Sleep(2 * time.Second)
		if how == "stop" {
			e.mustMbx("stop", "--keep-datapath")
		} else {
			e.daemon.Process.Signal(syscall.SIGUSR2)
		}
		e.daemon.Wait()
		e.daemon = nil
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

	if err := wrk.Wait(); err != nil {
		t.Fatalf("wrk: %v", err)
	}
	if err := iperf.Wait(); err != nil {
		t.Fatalf("iperf3 across restarts: %v\n%s", err, iperfOut.String())
	}
	t.Logf("%s", wrkOut.String())
	wrkClean(t, wrkOut.String())
	r := parseIperf(t, iperfOut.String())
	if r.End.SumSent.Bytes == 0 {
		t.Fatal("iperf3 sent nothing")
	}
	t.Logf("iperf3 sent %.0f MB across two restarts", r.End.SumSent.Bytes/1e6)
	if err := iperf6.Wait(); err != nil {
		t.Fatalf("iperf3 over IPv6 across restarts: %v\n%s", err, iperf6Out.String())
	}
	if r6 := parseIperf(t, iperf6Out.String()); r6.End.SumSent.Bytes == 0 {
		t.Fatal("iperf3 over IPv6 sent nothing")
	} else {
		t.Logf("iperf3 over IPv6 sent %.0f MB across two restarts", r6.End.SumSent.Bytes/1e6)
	}

	// --fresh discards the pinned state.
	e.stopDaemon()
	addrsPresent(false)
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--pin-dir", pin, "--fresh")
	if got := e.mustMbx("ipvsadm", "-S", "-n"); strings.TrimSpace(got) != "" {
		t.Fatalf("--fresh kept: %s", got)
	}
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

package e2e

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// mbx capture of curl through Full-NAT: a pcapng that tshark reads, with
// every client packet before translation (entry) and after it (exit, to a
// real server from the LIP, with the verdict); the entry records are exactly
// what tcpdump with the same filter sees on the client's side of the link.
func TestCapture(t *testing.T) {
	need(t, "tshark", "tcpdump")
	e, _ := twoArm(t)
	const expr = "src host 198.18.0.2 and tcp dst port 80"
	pcapng := filepath.Join(e.dir, "cap.pcapng")
	ref := filepath.Join(e.dir, "ref.pcap")
	capLog := filepath.Join(e.dir, "capture.log")

	logf, err := os.Create(capLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	capCmd := e.lab.Command("lb", mbxBin, "capture", "-i", "wan0", "-w", pcapng, "--duration", "20s", expr)
	capCmd.Stdout, capCmd.Stderr = logf, logf
	if err := capCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer capCmd.Process.Kill()
	// -w - : tcpdump's AppArmor profile may not let it write the test's
	// directory; the test writes its output.
	refFile, err := os.Create(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer refFile.Close()
	var tcpdumpErr strings.Builder
	tcpdump := e.lab.Command("client", "tcpdump", "-i", "eth0", "-n", "-U", "--immediate-mode", "-w", "-", expr)
	tcpdump.Stdout, tcpdump.Stderr = refFile, &tcpdumpErr
	if err := tcpdump.Start(); err != nil {
		t.Fatal(err)
	}
	defer tcpdump.Process.Kill()
	waitFor(t, 10*time.Second, func() bool {
		b, _ := os.ReadFile(capLog)
		if strings.Contains(string(b), "mbx: ") {
			t.Fatalf("mbx capture failed: %s", b)
		}
		return strings.Contains(string(b), "capturing on wan0")
	}, "mbx capture to start")
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(tcpdumpErr.String(), "listening on") }, "tcpdump to start")

	for range 3 {
		e.curl("-o", "/dev/null", "http://"+vip+"/")
	}
	time.Sleep(500 * time.Millisecond)
	tcpdump.Process.Signal(os.Interrupt)
	tcpdump.Wait()
	if st, _ := os.Stat(ref); st == nil || st.Size() <= 24 {
		t.Fatalf("tcpdump wrote nothing: %s", tcpdumpErr.String())
	}
	capCmd.Process.Signal(os.Interrupt)
	if err := capCmd.Wait(); err != nil {
		b, _ := os.ReadFile(capLog)
		t.Fatalf("mbx capture: %v\n%s", err, b)
	}

	fields := func(file string, f ...string) [][]string {
		args := []string{"-r", file, "-n", "-T", "fields", "-E", "separator=|"}
		for _, x := range f {
			args = append(args, "-e", x)
		}
		b, err := e.lab.Command("lb", "tshark", args...).Output() // stdout only: tshark warns on stderr
		if err != nil {
			t.Fatalf("tshark %v: %v", args, err)
		}
		out := string(b)
		var rows [][]string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if r := strings.Split(l, "|"); len(r) == len(f) {
				rows = append(rows, r)
			} else if l != "" {
				t.Fatalf("tshark %v: unexpected line %q in:\n%s", args, l, out)
			}
		}
		return rows
	}
	rows := fields(pcapng, "frame.interface_name", "frame.comment", "ip.src", "ip.dst", "tcp.dstport", "tcp.seq_raw", "tcp.len")
	var entry, exit []string
	for _, r := range rows {
		key := r[5] + "/" + r[6] // raw sequence number and length: survive translation
		switch r[0] {
		case "wan0 entry":
			if r[2] != "198.18.0.2" || r[3] != vip || r[4] != "80" || r[1] != "mbx entry" {
				t.Errorf("entry record %v", r)
			}
			entry = append(entry, key)
		case "wan0 exit":
			// Redirected, or passed to the kernel's stack (a connection's
			// first packet while the next hop's neighbour is unresolved).
			if r[2] != "198.18.1.200" || (r[3] != "198.18.1.2" && r[3] != "198.18.1.3") ||
				(r[1] != "mbx exit XDP_REDIRECT" && r[1] != "mbx exit XDP_PASS") {
				t.Errorf("exit record %v", r)
			}
			exit = append(exit, key)
		default:
			t.Errorf("record on interface %q", r[0])
		}
	}
	if len(entry) < 3*5 {
		t.Fatalf("%d entry records for 3 curls:\n%v", len(entry), rows)
	}
	sort.Strings(entry)
	sort.Strings(exit)
	if strings.Join(entry, " ") != strings.Join(exit, " ") {
		t.Errorf("entry and exit records differ:\nentry %v\nexit  %v", entry, exit)
	}
	var want []string
	for _, r := range fields(ref, "tcp.seq_raw", "tcp.len") {
		want = append(want, r[0]+"/"+r[1])
	}
	sort.Strings(want)
	if strings.Join(entry, " ") != strings.Join(want, " ") {
		t.Errorf("the capture's entry records are not what tcpdump saw:\nmbx     %v\ntcpdump %v", entry, want)
	}

	// Bad input: one line, nothing started.
	for _, args := range [][]string{
		{"capture", "-i", "wan0", "tcp port eighty"},
		{"capture", "-i", "rs-none", "tcp"},
		{"capture", "-i", "wan0", "--point", "middle", "tcp"},
		{"trace", "-i", "wan0"},
		{"trace", "-i", "wan0", "tcp port eighty"},
		{"trace", "-i", "rs-none", "tcp"},
		{"trace", "-i", "wan0", "--count", "0", "tcp"},
	} {
		out, err := e.mbx(args...)
		if err == nil || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("mbx %v: want a one-line error, got %v: %q", args, err, out)
		}
	}
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// IPv6 in the lab (fd00:198::/64): the two-arm and routed labs carry
// IPv6 beside IPv4 (lab/topology.go).
const (
	vip6    = "fd00:198::a:100"
	client6 = "fd00:198::a:2"
)

// url6 is http://[VIP6]PATH.
func url6(path string) string { return "http://[" + vip6 + "]" + path }

// curl6 fetches n URLs of the IPv6 VIP with fresh connections (curl's
// globbing would read the address's brackets as a range: -g, one URL each).
func (e *env) curl6(n int) string {
	e.t.Helper()
	args := []string{"-g", "-H", "Connection: close"}
	for i := 0; i < n; i++ {
		args = append(args, url6(fmt.Sprintf("/?%d", i)))
	}
	return e.curl(args...)
}

// checkMode6 is checkMode for the IPv6 VIP: curl under rr reaches every
// real server, which sees seenFrom (a LIP, or the client for direct modes);
// a sha256-checked 20 MB download from each; wrk without errors.
func checkMode6(t *testing.T, e *env, sum, seenFrom string, reals ...string) {
	t.Helper()
	out := e.curl6(10)
	c := countFirstWords(out)
	for _, r := range reals {
		if c[r] != 10/len(reals) {
			t.Fatalf("rr split %v, want an even split over %v:\n%s", c, reals, out)
		}
	}
	if !strings.Contains(out, seenFrom) {
		t.Fatalf("real servers should see %s:\n%s", seenFrom, out)
	}
	for i := range reals {
		got := e.host("client", "bash", "-c", "curl -g -sS --max-time 20 '"+url6("/files/20M.bin")+"' | sha256sum")
		if f := strings.Fields(got); len(f) == 0 || f[0] != sum {
			t.Fatalf("download %d: sha256 %q, want %s", i, got, sum)
		}
	}
	need(t, "wrk")
	w := e.host("client", "wrk", "-t2", "-c16", "-d4s", url6("/"))
	wrkClean(t, w)
}

// daemon6 starts mbx on the two-arm lab with the IPv6 VIP on wan0 and,
// with fnat, the IPv6 Full-NAT service of rs1 and rs2 from the IPv6 LIP.
func (e *env) daemon6(fnat bool) {
	e.t.Helper()
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--pin-dir", "none")
	e.mustMbx("addr", "add", vip6+"/128", "dev", "wan0")
	if fnat {
		e.ipvsadm(`
			-A -t [fd00:198::a:100]:80 -s rr
			-a -t [fd00:198::a:100]:80 -r [fd00:198::b:2] -b
			-a -t [fd00:198::a:100]:80 -r [fd00:198::b:3] -b
			--add-laddr -z fd00:198::b:200 -t [fd00:198::a:100]:80 -F lan0`)
	}
}

// TestFullNAT6: an IPv6 VIP, IPv6 real servers, an IPv6 LIP.
func TestFullNAT6(t *testing.T) {
	e, sum := twoArmNoDaemon(t)
	e.daemon6(true)
	checkMode6(t, e, sum, "fd00:198::b:200", "rs1", "rs2")
	ln := e.mustMbx("ipvsadm", "-ln")
	if !strings.Contains(ln, "TCP  [fd00:198::a:100]:80 rr") || strings.Count(ln, "FullNat") != 2 {
		t.Errorf("ipvsadm -ln:\n%s", ln)
	}
	// A connection held open shows in -lnc with its LIP.
	e.background("client", "curl", "-g", "-sS", "--max-time", "20", "--limit-rate", "2M", "-o", "/dev/null", url6("/files/20M.bin"))
	time.Sleep(time.Second)
	if lnc := e.mustMbx("ipvsadm", "-lnc"); !strings.Contains(lnc, "[fd00:198::b:200]:") || !strings.Contains(lnc, "ESTABLISHED") {
		t.Errorf("ipvsadm -lnc does not list the IPv6 connection:\n%s", lnc)
	}
	// IPv4 keeps working beside it.
	e.mustMbx("addr", "add", vip+"/32", "dev", "wan0")
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)
	if out := e.curl("http://" + vip + "/"); !strings.HasPrefix(out, "rs1 198.18.1.200:") {
		t.Errorf("IPv4 service beside the IPv6 one: %q", out)
	}
	// Bad input: an IPv6 LIP for IPv4 real servers, refused whole.
	e.refused("both families", "ipvsadm", "-a", "-t", "[fd00:198::a:100]:80", "-r", "198.18.1.3", "-b")
}

// TestNAT64: an IPv6 VIP in front of IPv4 real servers, reached from an
// IPv4 LIP (the DPVS tutorial's "IPv6-IPv4 for fullnat").
func TestNAT64(t *testing.T) {
	e, sum := twoArmNoDaemon(t)
	e.daemon6(false)
	e.ipvsadm(`
		-A -t [fd00:198::a:100]:80 -s rr
		-a -t [fd00:198::a:100]:80 -r 198.18.1.2 -b
		-a -t [fd00:198::a:100]:80 -r 198.18.1.3 -b`)
	e.refused("NAT64", "ipvsadm", "--add-laddr", "-z", "fd00:198::b:200", "-t", "[fd00:198::a:100]:80", "-F", "lan0")
	e.ipvsadm(`--add-laddr -z 198.18.1.200 -t [fd00:198::a:100]:80 -F lan0`)
	checkMode6(t, e, sum, "198.18.1.200:", "rs1", "rs2")

	t.Run("iperf3 over TCP and UDP", func(t *testing.T) {
		e.t = t
		need(t, "iperf3")
		e.background("rs1", "iperf3", "-s", "-p", "5201")
		e.waitTCP("rs1", "127.0.0.1:5201")
		e.ipvsadm(`
			-A -t [fd00:198::a:100]:5201 -s rr
			-a -t [fd00:198::a:100]:5201 -r 198.18.1.2 -b
			--add-laddr -z 198.18.1.200 -t [fd00:198::a:100]:5201 -F lan0
			-A -u [fd00:198::a:100]:5201 -s rr
			-a -u [fd00:198::a:100]:5201 -r 198.18.1.2 -b
			--add-laddr -z 198.18.1.200 -u [fd00:198::a:100]:5201 -F lan0`)
		r := parseIperf(t, e.host("client", "iperf3", "-c", vip6, "-t", "2", "-J"))
		if r.End.SumReceived.Bytes == 0 {
			t.Fatalf("TCP through NAT64 moved nothing: %+v", r.End)
		}
		out := e.host("client", "iperf3", "-c", vip6, "-u", "-b", "8M", "-t", "2", "-J")
		u := parseIperf(t, out[strings.Index(out, "{"):])
		t.Logf("UDP through NAT64: %+v", u.End.Sum)
		if u.End.Sum.Packets < 500 || u.End.Sum.LostPercent > 1 {
			t.Errorf("UDP through NAT64 lost datagrams: %+v", u.End.Sum)
		}
	})
}

// TestDR6: direct routing of an IPv6 service to real servers that own the
// VIP on their loopback (IPv6 answers neighbour solicitations only for
// the receiving interface's addresses: no arp_ignore needed).
func TestDR6(t *testing.T) {
	e, sum := twoArmNoDaemon(t)
	for _, rs := range []string{"rs1", "rs2"} {
		e.host(rs, "ip", "-6", "addr", "add", vip6+"/128", "dev", "lo")
		e.host(rs, "ip", "-6", "route", "add", "default", "via", "fd00:198::b:1")
	}
	e.daemon6(false)
	e.ipvsadm(`
		-A -t [fd00:198::a:100]:80 -s rr
		-a -t [fd00:198::a:100]:80 -r [fd00:198::b:2] -g
		-a -t [fd00:198::a:100]:80 -r [fd00:198::b:3] -g`)
	checkMode6(t, e, sum, client6, "rs1", "rs2")
	if out := e.mustMbx("ipvsadm", "-ln"); strings.Count(out, "Route") != 2 {
		t.Errorf("ipvsadm -ln should show Route twice:\n%s", out)
	}
}

// TestDROneArm6: client, mbx and the real servers on one link; the real
// servers answer the client directly from the VIP on their loopback.
func TestDROneArm6(t *testing.T) {
	need(t, "nginx", "curl", "ethtool")
	e := newEnv(t, "fnat-one-arm")
	sum := writeRandom(t, filepath.Join(e.filesDir(), "20M.bin"), 20<<20)
	for _, rs := range []string{"rs1", "rs2"} {
		e.nginx(rs)
		e.host(rs, "ip", "-6", "addr", "add", vip6+"/128", "dev", "lo")
	}
	e.startDaemon("--iface", "eth0", "--pin-dir", "none")
	e.mustMbx("addr", "add", vip6+"/128", "dev", "eth0")
	e.ipvsadm(`
		-A -t [fd00:198::a:100]:80 -s rr
		-a -t [fd00:198::a:100]:80 -r [fd00:198::a:3] -g
		-a -t [fd00:198::a:100]:80 -r [fd00:198::a:4] -g`)
	checkMode6(t, e, sum, client6, "rs1", "rs2")
}

// TestTunnel6: ip6ip6 to an on-link and a routed real server, each running
// `mbx decap` for the IPv6 VIP.
func TestTunnel6(t *testing.T) {
	e, sum := routedLab(t)
	e.host("router", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	for _, rs := range []string{"rs1", "rs2"} {
		e.host(rs, "ip", "-6", "addr", "add", vip6+"/128", "dev", "lo")
		e.host(rs, mbxBin, "decap", "--iface", "eth0", "--vip", vip6)
	}
	e.mustMbx("addr", "add", vip6+"/128", "dev", "wan0")
	e.ipvsadm(`
		-A -t [fd00:198::a:100]:80 -s rr
		-a -t [fd00:198::a:100]:80 -r [fd00:198::b:2] -i
		-a -t [fd00:198::a:100]:80 -r [fd00:198::c:7] -i`)
	checkMode6(t, e, sum, client6, "rs1", "rs2")
	for _, rs := range []string{"rs1", "rs2"} {
		st := e.host(rs, mbxBin, "decap", "--iface", "eth0", "--stats")
		if strings.Contains(st, "decapsulated 0\n") {
			t.Errorf("%s decapsulated nothing:\n%s", rs, st)
		}
	}
	// Bad input: DR to the routed real server is refused.
	e.refused("not on-link", "ipvsadm", "-a", "-t", "[fd00:198::a:100]:80", "-r", "[fd00:198::c:8]", "-g")
}

// TestPMTU6 is TestPMTU for IPv6 services: with the client's link at MTU
// 1400, a 20 MB download through Full-NAT (IPv6 real servers, one behind a
// router) and NAT64 only completes if mbx answers the real servers' large
// packets ("packet too big" to IPv6 ones, "fragmentation needed" to IPv4
// ones, which grow by 20 bytes as IPv6); an ip6ip6 upload only completes if
// mbx tells the client the MTU minus the outer header.
func TestPMTU6(t *testing.T) {
	e, sum := routedLab(t)
	e.host("router", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	toobig := func() uint64 { return e.datapathCounter("icmp_too_big") }
	t.Run("tunnel upload", func(t *testing.T) {
		e.t = t
		need(t, "iperf3")
		e.host("rs1", "ip", "-6", "addr", "add", vip6+"/128", "dev", "lo")
		e.host("rs1", mbxBin, "decap", "--iface", "eth0", "--vip", vip6)
		e.background("rs1", "iperf3", "-s", "-p", "5201")
		e.waitTCP("rs1", "127.0.0.1:5201")
		e.mustMbx("addr", "add", vip6+"/128", "dev", "wan0")
		e.ipvsadm(`
			-C
			-A -t [fd00:198::a:100]:5201 -s rr
			-a -t [fd00:198::a:100]:5201 -r [fd00:198::b:2] -i`)
		before := toobig()
		r := parseIperf(t, e.host("client", "iperf3", "-c", vip6, "-n", "20M", "-J", "--connect-timeout", "5000"))
		t.Logf("iperf3 upload through the ip6ip6 tunnel: %+v", r.End.SumReceived)
		if toobig() == before {
			t.Errorf("no packet too big was sent: the test did not exercise PMTU")
		}
	})
	e.host("lb", "ip", "link", "set", "wan0", "mtu", "1400")
	for _, m := range []struct{ name, reals, lip string }{
		{"full-nat", "-a -t [fd00:198::a:100]:80 -r [fd00:198::b:2] -b\n-a -t [fd00:198::a:100]:80 -r [fd00:198::c:7] -b", "fd00:198::b:200"},
		{"nat64", "-a -t [fd00:198::a:100]:80 -r 198.18.1.2 -b\n-a -t [fd00:198::a:100]:80 -r 198.18.5.7 -b", "198.18.1.200"},
	} {
		t.Run(m.name, func(t *testing.T) {
			e.t = t
			e.ipvsadm(`
				-C
				-A -t [fd00:198::a:100]:80 -s rr
				` + m.reals + `
				--add-laddr -z ` + m.lip + ` -t [fd00:198::a:100]:80 -F lan0`)
			before := toobig()
			for i := range 2 {
				got := e.host("client", "bash", "-c", "curl -g -sS --max-time 30 '"+url6("/files/20M.bin")+"' | sha256sum")
				if f := strings.Fields(got); len(f) == 0 || f[0] != sum {
					t.Fatalf("download %d: sha256 %q, want %s", i, got, sum)
				}
			}
			if toobig() == before {
				t.Errorf("no packet too big / fragmentation needed was sent: the test did not exercise PMTU")
			}
		})
	}
}

// TestFragments6 is TestFragments for an IPv6 service: UDP datagrams of
// 3000 bytes (the client's kernel sends each as three IPv6 fragments)
// through Full-NAT; later fragments follow their first one to the same
// real server, and iperf3 loses none.
func TestFragments6(t *testing.T) {
	need(t, "iperf3")
	e, _ := twoArmNoDaemon(t)
	e.daemon6(false)
	e.background("rs1", "iperf3", "-s", "-p", "5201")
	e.waitTCP("rs1", "127.0.0.1:5201")
	e.ipvsadm(`
		-A -t [fd00:198::a:100]:5201 -s rr
		-a -t [fd00:198::a:100]:5201 -r [fd00:198::b:2] -b
		--add-laddr -z fd00:198::b:200 -t [fd00:198::a:100]:5201 -F lan0
		-A -u [fd00:198::a:100]:5201 -s rr
		-a -u [fd00:198::a:100]:5201 -r [fd00:198::b:2] -b
		--add-laddr -z fd00:198::b:200 -u [fd00:198::a:100]:5201 -F lan0`)
	before := e.datapathCounter("fragment")
	out := e.host("client", "iperf3", "-c", vip6, "-u", "-l", "3000", "-b", "8M", "-t", "2", "-J")
	r := parseIperf(t, out[strings.Index(out, "{"):])
	t.Logf("UDP over IPv6, 3000-byte datagrams: %+v", r.End.Sum)
	if r.End.Sum.Packets < 500 || r.End.Sum.LostPercent > 1 {
		t.Errorf("fragmented datagrams lost: %+v", r.End.Sum)
	}
	if n := e.datapathCounter("fragment") - before; n < uint64(r.End.Sum.Packets) {
		t.Errorf("only %d later fragments went through mbx for %d datagrams", n, r.End.Sum.Packets)
	}
}

// TestCaptureIPv6: mbx capture of IPv6 Full-NAT traffic. Entry records are
// written by mbx_xdp, exit records by mbx_lb6 after the tail call: every
// client packet appears before translation (client -> VIP) and after it
// (LIP -> real server, redirected or, while the real server's neighbour
// entry is unresolved, passed to the kernel translated).
func TestCaptureIPv6(t *testing.T) {
	need(t, "tshark")
	e, _ := twoArmNoDaemon(t)
	e.daemon6(true)
	pcapng := filepath.Join(e.dir, "cap6.pcapng")
	capLog := filepath.Join(e.dir, "capture6.log")
	logf, err := os.Create(capLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	capCmd := e.lab.Command("lb", mbxBin, "capture", "-i", "wan0", "-w", pcapng, "--duration", "20s", "ip6 and tcp dst port 80")
	capCmd.Stdout, capCmd.Stderr = logf, logf
	if err := capCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer capCmd.Process.Kill()
	waitFor(t, 10*time.Second, func() bool {
		b, _ := os.ReadFile(capLog)
		return strings.Contains(string(b), "capturing on wan0")
	}, "mbx capture to start")
	e.curl6(3)
	time.Sleep(500 * time.Millisecond)
	capCmd.Process.Signal(os.Interrupt)
	if err := capCmd.Wait(); err != nil {
		b, _ := os.ReadFile(capLog)
		t.Fatalf("mbx capture: %v\n%s", err, b)
	}
	b, err := e.lab.Command("lb", "tshark", "-r", pcapng, "-n", "-T", "fields", "-E", "separator=|",
		"-e", "frame.interface_name", "-e", "frame.comment", "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "tcp.seq_raw").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	entry, exit := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		r := strings.Split(l, "|")
		if len(r) != 5 {
			t.Fatalf("tshark line %q", l)
		}
		switch {
		case r[0] == "wan0 entry" && r[2] == client6 && r[3] == vip6:
			entry[r[4]] = true
		case r[0] == "wan0 exit" && r[2] == "fd00:198::b:200" && (r[1] == "mbx exit XDP_REDIRECT" || r[1] == "mbx exit XDP_PASS"):
			// Passed: translated, to the kernel while a neighbour is unresolved.
			exit[r[4]] = true
		default:
			t.Errorf("unexpected record %v", r)
		}
	}
	if len(entry) < 3 || len(entry) != len(exit) {
		t.Fatalf("%d entry and %d exit records (sequence numbers) for 3 connections", len(entry), len(exit))
	}
	for k := range entry {
		if !exit[k] {
			t.Errorf("packet seq %s entered but did not leave", k)
		}
	}
}

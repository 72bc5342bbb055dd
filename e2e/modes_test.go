package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// ownVIP makes a real server accept the VIP without answering ARP for it,
// as the DPVS tutorial's real-server commands for DR and tunnels do.
func (e *env) ownVIP(host, iface string) {
	e.t.Helper()
	e.host(host, "ip", "addr", "add", vip+"/32", "dev", "lo")
	for _, c := range []string{
		"net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
		"net.ipv4.conf." + iface + ".arp_ignore=1", "net.ipv4.conf." + iface + ".arp_announce=2",
		// Tunnelled packets come in on iface with the client's address.
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf." + iface + ".rp_filter=0",
	} {
		e.host(host, "sysctl", "-qw", c)
	}
}

// checkMode runs the checks every forwarding mode must pass: curl under rr
// reaches both real servers, which see the client's own address (only
// Full-NAT hides it); a sha256-checked 20 MB download from each; wrk
// without errors.
func checkMode(t *testing.T, e *env, sum string, reals ...string) {
	t.Helper()
	out := e.curl("-H", "Connection: close", "http://"+vip+"/?[1-10]")
	c := countFirstWords(out)
	for _, r := range reals {
		if c[r] != 10/len(reals) {
			t.Fatalf("rr split %v, want an even split over %v:\n%s", c, reals, out)
		}
	}
	if !strings.Contains(out, "198.18.0.2:") {
		t.Fatalf("real servers should see the client's address:\n%s", out)
	}
	for i := range reals {
		got := e.host("client", "bash", "-c", "curl -sS --max-time 20 http://"+vip+"/files/20M.bin | sha256sum")
		if f := strings.Fields(got); len(f) == 0 || f[0] != sum {
			t.Fatalf("download %d: sha256 %q, want %s", i, got, sum)
		}
	}
	need(t, "wrk")
	w := e.host("client", "wrk", "-t2", "-c16", "-d4s", "http://"+vip+"/")
	wrkClean(t, w)
}

func routedLab(t *testing.T) (*env, string) {
	need(t, "nginx", "curl", "ethtool")
	e := newEnv(t, "lb-routed")
	e.host("router", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	sum := writeRandom(t, filepath.Join(e.filesDir(), "20M.bin"), 20<<20)
	e.nginx("rs1")
	e.nginx("rs2")
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--pin-dir", "none")
	e.mustMbx("addr", "add", vip+"/32", "dev", "wan0")
	return e, sum
}

// TestDRTwoArm: the client on wan0, the real servers on lan0 own the VIP
// on their loopback and answer through lb as their router.
func TestDRTwoArm(t *testing.T) {
	e, sum := twoArmNoDaemon(t)
	for _, rs := range []string{"rs1", "rs2"} {
		e.ownVIP(rs, "eth0")
		e.host(rs, "ip", "route", "add", "default", "via", "198.18.1.1")
	}
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--pin-dir", "none")
	e.mustMbx("addr", "add", vip+"/32", "dev", "wan0")
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -g
		-a -t 198.18.0.100:80 -r 198.18.1.3 -g`)
	checkMode(t, e, sum, "rs1", "rs2")
	if out := e.mustMbx("ipvsadm", "-ln"); strings.Count(out, "Route") != 2 {
		t.Errorf("ipvsadm -ln should show Route twice:\n%s", out)
	}
}

// TestDROneArm: client, mbx and real servers on one link; replies go from
// the real servers straight to the client.
func TestDROneArm(t *testing.T) {
	need(t, "nginx", "curl", "ethtool")
	e := newEnv(t, "fnat-one-arm")
	sum := writeRandom(t, filepath.Join(e.filesDir(), "20M.bin"), 20<<20)
	for _, rs := range []string{"rs1", "rs2"} {
		e.nginx(rs)
		e.ownVIP(rs, "eth0")
	}
	e.startDaemon("--iface", "eth0", "--pin-dir", "none")
	e.mustMbx("addr", "add", vip+"/32", "dev", "eth0")
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.0.3 -g
		-a -t 198.18.0.100:80 -r 198.18.0.4 -g`)
	checkMode(t, e, sum, "rs1", "rs2")
}

// TestTunnel: IP-in-IP to an on-link real server and to one behind a
// router, each running `mbx decap`; RSS-spread outer sources
// (--tunnel-src) for the second service.
func TestTunnel(t *testing.T) {
	e, sum := routedLab(t)
	for _, rs := range []string{"rs1", "rs2"} {
		e.ownVIP(rs, "eth0")
		e.host(rs, mbxBin, "decap", "--iface", "eth0", "--vip", vip)
	}
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -i
		-a -t 198.18.0.100:80 -r 198.18.5.7 -i`)
	checkMode(t, e, sum, "rs1", "rs2")
	if out := e.mustMbx("ipvsadm", "-ln"); strings.Count(out, "Tunnel") != 2 {
		t.Errorf("ipvsadm -ln should show Tunnel twice:\n%s", out)
	}
	for _, rs := range []string{"rs1", "rs2"} {
		st := e.host(rs, mbxBin, "decap", "--iface", "eth0", "--stats")
		if strings.Contains(st, "decapsulated 0\n") {
			t.Errorf("%s decapsulated nothing:\n%s", rs, st)
		}
	}
	// Bad input: DR to the routed real server is refused, nothing changes.
	e.refused("not on-link", "ipvsadm", "-a", "-t", vip+":80", "-r", "198.18.5.8", "-g")
}

// TestNAT: destination NAT; the real servers route back through mbx, which
// restores the VIP; wrk on 2 threads keeps both cores busy.
func TestNAT(t *testing.T) {
	e, sum := routedLab(t)
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -m
		-a -t 198.18.0.100:80 -r 198.18.5.7 -m`)
	checkMode(t, e, sum, "rs1", "rs2")
	saved := e.mustMbx("ipvsadm", "-Sn")
	if !strings.Contains(saved, "-m") {
		t.Errorf("ipvsadm -S lost the NAT method:\n%s", saved)
	}
	if out := e.mustMbx("ipvsadm", "-ln"); strings.Count(out, "Masq") != 2 {
		t.Errorf("ipvsadm -ln should show Masq twice:\n%s", out)
	}
}

// TestPMTU: paths narrower than the real servers think. With lb's wan0 at
// MTU 1400 (the client's link and the real servers' at 1500), a 20 MB
// download only completes if mbx answers the real servers' 1500-byte
// packets with "fragmentation needed" (Full-NAT, NAT); a tunnel's upload
// only completes if mbx tells the client the MTU minus the outer header.
func TestPMTU(t *testing.T) {
	e, sum := routedLab(t)
	download := func(t *testing.T) {
		t.Helper()
		for i := range 2 {
			got := e.host("client", "bash", "-c", "curl -sS --max-time 30 http://"+vip+"/files/20M.bin | sha256sum")
			if f := strings.Fields(got); len(f) == 0 || f[0] != sum {
				t.Fatalf("download %d: sha256 %q, want %s", i, got, sum)
			}
		}
	}
	toobig := func() uint64 { return e.datapathCounter("icmp_too_big") }
	// The tunnel first: the NAT part teaches the real servers a smaller
	// path MTU toward the client, which would shrink the upload's MSS.
	t.Run("tunnel upload", func(t *testing.T) {
		e.t = t
		need(t, "iperf3")
		e.ownVIP("rs1", "eth0")
		e.host("rs1", mbxBin, "decap", "--iface", "eth0", "--vip", vip)
		e.background("rs1", "iperf3", "-s", "-p", "5201")
		e.waitTCP("rs1", "127.0.0.1:5201")
		e.ipvsadm(`
			-C
			-A -t 198.18.0.100:5201 -s rr
			-a -t 198.18.0.100:5201 -r 198.18.1.2 -i`)
		before := toobig()
		r := parseIperf(t, e.host("client", "iperf3", "-c", vip, "-n", "20M", "-J", "--connect-timeout", "5000"))
		t.Logf("iperf3 upload through the tunnel: %+v", r)
		if toobig() == before {
			t.Errorf("no frag-needed was sent: the test did not exercise PMTU")
		}
	})
	e.host("lb", "ip", "link", "set", "wan0", "mtu", "1400")
	for _, m := range []struct{ name, flag string }{{"full-nat", "-b"}, {"nat", "-m"}} {
		t.Run(m.name, func(t *testing.T) {
			e.t = t
			e.ipvsadm(`
				-C
				-A -t 198.18.0.100:80 -s rr
				-a -t 198.18.0.100:80 -r 198.18.1.2 ` + m.flag + `
				-a -t 198.18.0.100:80 -r 198.18.5.7 ` + m.flag + `
				--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F lan0`)
			before := toobig()
			download(t)
			if toobig() == before {
				t.Errorf("no frag-needed was sent: the test did not exercise PMTU")
			}
		})
	}
}

// TestFragments: UDP datagrams of 3000 bytes (three IPv4 fragments each on
// 1500-byte links) through Full-NAT and NAT: later fragments follow their
// first one to the same real server, and iperf3 loses none.
func TestFragments(t *testing.T) {
	need(t, "iperf3")
	e, _ := routedLab(t)
	e.background("rs1", "iperf3", "-s", "-p", "5201")
	e.waitTCP("rs1", "127.0.0.1:5201")
	for _, m := range []struct{ name, flag string }{{"full-nat", "-b"}, {"nat", "-m"}} {
		t.Run(m.name, func(t *testing.T) {
			e.t = t
			e.ipvsadm(`
				-C
				-A -t 198.18.0.100:5201 -s rr
				-a -t 198.18.0.100:5201 -r 198.18.1.2 ` + m.flag + `
				--add-laddr -z 198.18.1.200 -t 198.18.0.100:5201 -F lan0
				-A -u 198.18.0.100:5201 -s rr
				-a -u 198.18.0.100:5201 -r 198.18.1.2 ` + m.flag + `
				--add-laddr -z 198.18.1.200 -u 198.18.0.100:5201 -F lan0`)
			before := e.datapathCounter("fragment")
			out := e.host("client", "iperf3", "-c", vip, "-u", "-l", "3000", "-b", "8M", "-t", "2", "-J")
			// iperf3 warns about fragmentation before its JSON.
			r := parseIperf(t, out[strings.Index(out, "{"):])
			t.Logf("UDP, 3000-byte datagrams: %+v", r.End.Sum)
			if r.End.Sum.Packets < 500 || r.End.Sum.LostPercent > 1 {
				t.Errorf("fragmented datagrams lost: %+v", r.End.Sum)
			}
			if n := e.datapathCounter("fragment") - before; n < uint64(r.End.Sum.Packets) {
				t.Errorf("only %d later fragments went through mbx for %d datagrams", n, r.End.Sum.Packets)
			}
		})
	}
}

// datapathCounter reads one of the daemon's datapath counters.
func (e *env) datapathCounter(name string) uint64 {
	e.t.Helper()
	var st struct{ Datapath map[string]uint64 }
	out := e.host("lb", "curl", "-s", "--unix-socket", e.socket, "http://mbx/v1/status")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		e.t.Fatal(err)
	}
	return st.Datapath[name]
}

// TestSNAT: two LAN hosts (rs1 and the router of the lb-routed lab) reach a
// WAN server (the client host, which has no route back to the LAN) through
// mbx's WAN address 198.18.0.1, at the same time: TCP (curl, a
// sha256-checked 20 MB download), UDP (iperf3) and ping (identifiers
// rewritten).
func TestSNAT(t *testing.T) {
	need(t, "iperf3", "ping")
	e, sum := routedLab(t)
	e.nginx("client")
	e.background("client", "iperf3", "-s", "-p", "5301")
	e.background("client", "iperf3", "-s", "-p", "5302")
	e.waitTCP("client", "127.0.0.1:5301")
	e.waitTCP("client", "127.0.0.1:5302")
	const tcpMatch = "proto=tcp,src-range=198.18.1.0-198.18.1.254,oif=wan0"
	const udpMatch = "proto=udp,src-range=198.18.1.0-198.18.1.254,oif=wan0"
	const icmpMatch = "proto=icmp,src-range=198.18.1.0-198.18.1.254,oif=wan0"
	// Without SNAT the LAN cannot reach the server (no route back).
	if out, err := e.lab.Run("rs1", "curl", "-sS", "--max-time", "2", "http://198.18.0.2/"); err == nil {
		t.Fatalf("the WAN server answered without SNAT: %s", out)
	}
	e.ipvsadm(`
		-A -s rr -H ` + tcpMatch + `
		-a -H ` + tcpMatch + ` -r 198.18.0.1:0 -J
		-A -s rr -H ` + udpMatch + `
		-a -H ` + udpMatch + ` -r 198.18.0.1:0 -J
		-A -s rr -H ` + icmpMatch + `
		-a -H ` + icmpMatch + ` -r 198.18.0.1:0 -J`)
	if out := e.mustMbx("ipvsadm", "-ln"); !strings.Contains(out, "MATCH "+tcpMatch) || !strings.Contains(out, "Snat") {
		t.Errorf("ipvsadm -ln:\n%s", out)
	}
	hosts := []string{"rs1", "router"}
	errs := make(chan error, 3*len(hosts))
	for i, h := range hosts {
		go func() {
			out, err := e.lab.Run(h, "sh", "-c", "curl -sS --max-time 10 http://198.18.0.2/ && curl -sS --max-time 30 http://198.18.0.2/files/20M.bin | sha256sum")
			if err == nil && (!strings.Contains(out, "client 198.18.0.1:") || !strings.Contains(out, sum)) {
				err = fmt.Errorf("%s: the server should see the WAN address and the download match:\n%s", h, out)
			}
			errs <- err
		}()
		go func() {
			out, err := e.lab.Run(h, "iperf3", "-c", "198.18.0.2", "-p", fmt.Sprint(5301+i), "-u", "-b", "5M", "-t", "2", "-J")
			if err == nil {
				var r iperfResult
				if jerr := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &r); jerr != nil || r.Error != "" || r.End.Sum.Packets == 0 || r.End.Sum.LostPercent > 1 {
					err = fmt.Errorf("%s: UDP through SNAT: %v %s %+v", h, jerr, r.Error, r.End.Sum)
				}
			}
			errs <- err
		}()
	}
	for _, h := range hosts {
		go func() {
			out, err := e.lab.Run(h, "ping", "-c", "5", "-i", "0.2", "-W", "2", "198.18.0.2")
			if err != nil || !strings.Contains(out, " 0% packet loss") {
				err = fmt.Errorf("%s: ping through SNAT: %v\n%s", h, err, out)
			}
			errs <- err
		}()
	}
	for range 3 * len(hosts) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if s := e.mustMbx("ipvsadm", "-Sn"); !strings.Contains(s, "-a -H "+tcpMatch+" -r 198.18.0.1:0 -J") {
		t.Errorf("ipvsadm -S:\n%s", s)
	}
}

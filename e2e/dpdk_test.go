package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mbx-net/mbx/backend"
)

// dpdkOffloads keeps frames within a vdev's 2 KB buffers: the hosts send
// no TSO/GSO segments, the switch does not coalesce them (GRO), nor do
// lb's own veths (AF_PACKET taps a device after GRO: 64 KB frames).
func (e *env) dpdkOffloads() {
	e.t.Helper()
	for _, h := range []string{"client", "rs1", "rs2"} {
		e.host(h, "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off", "tx", "off")
	}
	for _, p := range []string{"p0", "p1", "p2", "p3"} {
		e.host("sw", "ethtool", "-K", p, "gro", "off", "tso", "off", "gso", "off", "tx", "off")
	}
	for _, p := range []string{"wan0", "lan0"} {
		e.host("lb", "ethtool", "-K", p, "gro", "off")
	}
}

// buildDPDK builds mbx with the dpdk backend (skips without libdpdk-dev).
func buildDPDK(t *testing.T) string {
	t.Helper()
	if err := exec.Command("pkg-config", "--exists", "libdpdk").Run(); err != nil {
		t.Skip("libdpdk-dev is not installed (scripts/setup.sh installs it)")
	}
	bin := filepath.Join(t.TempDir(), "mbx-dpdk")
	if out, err := exec.Command("go", "build", "-tags", "dpdk", "-o", bin, "../cmd/mbx").CombinedOutput(); err != nil {
		t.Fatalf("building mbx with dpdk: %v\n%s", err, out)
	}
	return bin
}

// The foundation's two-arm Full-NAT test with `--backend dpdk`: DPDK owns
// wan0 and lan0 through a vdev each, mbx answers ARP and ping for the VIP
// and the LIP and resolves the client and the real servers, and curl, wrk
// and a sha256-checked 20 MB download go through the Go datapath, on
// net_af_xdp without hugepages and with them, and on net_af_packet (GRO
// off on its interfaces: docs/dpdk.md).
func TestDPDKFullNAT(t *testing.T) {
	bin := buildDPDK(t)
	for _, tc := range []struct {
		vdev string
		huge bool
	}{{"net_af_xdp", false}, {"net_af_packet", false}, {"net_af_xdp", true}} {
		name := tc.vdev
		if tc.huge {
			name += "-hugepages"
		}
		vdev := tc.vdev
		t.Run(name, func(t *testing.T) {
			mem := "--no-huge -m 512"
			if tc.huge {
				mem = "-m 512 --huge-unlink"
				withHugepages(t, 512)
			}
			e, sum := twoArmNoDaemon(t)
			e.dpdkOffloads()
			eal := "-l 0 --no-pci " + mem + " --vdev=" + vdev + "0,iface=wan0 --vdev=" + vdev + "1,iface=lan0"
			saved := mbxBin
			mbxBin = bin
			e.daemonEnv = append(e.daemonEnv, "MBX_DPDK_IDLE_SLEEP="+os.Getenv("MBX_DPDK_IDLE_SLEEP"))
			monLog := filepath.Join(e.dir, "events.jsonl")
			e.startDaemon("--backend", "dpdk", "--eal", eal, "--conn-max", "65536",
				"--port", vdev+"0=198.18.0.1/24", "--port", vdev+"1=198.18.1.1/24",
				"--monitor", vdev+"0", "--monitor-filter", "tcp port 80", "--monitor-log", monLog)
			mbxBin = saved
			e.ipvsadm(`
				-A -t 198.18.0.100:80 -s rr
				-a -t 198.18.0.100:80 -r 198.18.1.2 -b
				-a -t 198.18.0.100:80 -r 198.18.1.3 -b
				--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F ` + vdev + `1`)
			// mbx answers ARP and ping for the VIP itself: DPDK owns the port.
			e.host("client", "ping", "-c", "2", "-W", "2", vip)
			out := e.curl("-H", "Connection: close", "http://"+vip+"/?[1-10]")
			c := countFirstWords(out)
			if c["rs1"] != 5 || c["rs2"] != 5 || !strings.Contains(out, "198.18.1.200:") {
				t.Fatalf("rr through DPDK: %v, want 5/5 from the LIP:\n%s", c, out)
			}
			// The stream monitor (the Go tracker) on the client-side port saw
			// each connection from start to end, both sides' states.
			lives := waitAllEnded(t, monLog)
			if len(lives) != 10 {
				t.Errorf("the monitor logged %d connections for 10 requests", len(lives))
			}
			// Every connection ends with the FIN handshake. (A RST here
			// came once from the real server's kernel, not from mbx: the
			// lab without TIME_WAIT sockets answered a late FIN with a RST
			// until lab/topology.go set fin_timeout; TestLabLateFIN.) The
			// CONN_END's side is the RST's sender.
			for id, l := range lives {
				if l.server != vip+":80" || l.endReason != "fin" {
					t.Errorf("conn %d to %s ended by %q:", id, l.server, l.endReason)
					for _, ev := range l.events {
						t.Logf("  %.6f %s/%s side=%s client=%s server=%s", ev.Time, ev.Event, ev.Hook, ev.Side, ev.ClientState, ev.ServerState)
					}
				}
			}
			if st := e.mustMbx("stat", "--once"); !strings.Contains(st, "10 connections tracked") {
				t.Errorf("mbx stat:\n%s", st)
			}
			for i := range 2 { // both real servers under rr
				got := e.host("client", "bash", "-c", "curl -sS --max-time 30 http://"+vip+"/files/20M.bin | sha256sum")
				if f := strings.Fields(got); len(f) == 0 || f[0] != sum {
					t.Fatalf("download %d through DPDK: sha256 %q, want %s", i, got, sum)
				}
			}
			if os.Getenv("MBX_DPDK_DOWNLOAD") != "" { // a probe for the slow transfer without hugepages
				got, _ := e.lab.Run("client", "bash", "-c", "curl -sS --max-time 15 -o /dev/null -w '%{size_download} %{speed_download}\n' http://"+vip+"/files/20M.bin; cat /proc/net/softnet_stat; ip -s link show eth0; nstat -az TcpRetransSegs TcpExtTCPTimeouts TcpExtTCPLossProbes TcpExtTCPSackRecovery 2>&1 | tail -5")
				lbs, _ := e.lab.Run("lb", "bash", "-c", "ip -s link show wan0; ip -s link show lan0; ss --xdp -e -a 2>&1 | head -40")
				rss, _ := e.lab.Run("rs1", "bash", "-c", "nstat -az TcpRetransSegs TcpExtTCPTimeouts TcpExtTCPLossProbes TcpExtTCPSackRecovery TcpExtTCPSlowStartRetrans 2>&1 | tail -6; ss -ti | head -8")
				got += lbs + rss
				e.stopDaemon()
				l, _ := os.ReadFile(e.log)
				t.Fatalf("download: %s\n%s", got, l)
			}
			need(t, "wrk")
			wout := e.host("client", "wrk", "-t1", "-c4", "-d3s", "http://"+vip+"/")
			t.Logf("%s", wout)
			wrkClean(t, wout)
			stats := e.mustMbx("ipvsadm", "-ln", "--stats")
			if !strings.Contains(stats, "198.18.1.2:80") || !strings.Contains(stats, "198.18.1.3:80") {
				t.Errorf("ipvsadm -ln --stats:\n%s", stats)
			}
		})
	}
}

// TestDPDKWorkers: a worker per lcore (-l 0,1), each polling its own
// queue of both ports, fed by the vdev's RSS: net_af_packet's qpairs, a
// fanout group hashing flows over two sockets. (net_af_xdp's queue_count
// needs "combined" channels, which a veth does not have: DPDK 22.11 sees
// one.) Full-NAT and NAT replies that land on the other worker's queue are
// handed to the connection's owner; curl under rr, sha256-checked
// downloads and wrk go through both modes without a failed request, both
// workers forward, and packets were handed over.
func TestDPDKWorkers(t *testing.T) {
	bin := buildDPDK(t)
	for _, vdev := range []string{"net_af_packet"} {
		t.Run(vdev, func(t *testing.T) {
			e, sum := twoArmNoDaemon(t)
			e.dpdkOffloads()
			queues := ",qpairs=2"
			// NAT: the real servers answer the client through mbx.
			for _, h := range []string{"rs1", "rs2"} {
				e.host(h, "ip", "route", "add", "198.18.0.0/24", "via", "198.18.1.1")
			}
			eal := "-l 0,1 --no-pci --no-huge -m 1024 --vdev=" + vdev + "0,iface=wan0" + queues + " --vdev=" + vdev + "1,iface=lan0" + queues
			saved := mbxBin
			mbxBin = bin
			e.startDaemon("--backend", "dpdk", "--eal", eal, "--conn-max", "65536",
				"--port", vdev+"0=198.18.0.1/24", "--port", vdev+"1=198.18.1.1/24")
			mbxBin = saved
			e.ipvsadm(`
				-A -t 198.18.0.100:80 -s rr
				-a -t 198.18.0.100:80 -r 198.18.1.2 -b
				-a -t 198.18.0.100:80 -r 198.18.1.3 -b
				--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F ` + vdev + `1
				-A -t 198.18.0.100:8080 -s rr
				-a -t 198.18.0.100:8080 -r 198.18.1.2:80 -m
				-a -t 198.18.0.100:8080 -r 198.18.1.3:80 -m`)
			for _, m := range []struct{ name, port, from string }{{"Full-NAT", "", "198.18.1.200:"}, {"NAT", ":8080", "198.18.0.2:"}} {
				out := e.curl("-H", "Connection: close", "http://"+vip+m.port+"/?[1-10]")
				// Each worker's round robin starts at its own index: over
				// two workers, 10 connections still split 5/5.
				if c := countFirstWords(out); c["rs1"] != 5 || c["rs2"] != 5 || !strings.Contains(out, m.from) {
					t.Fatalf("%s rr over two workers: %v, want 5/5 seen from %s:\n%s", m.name, c, m.from, out)
				}
				for i := range 2 {
					got := e.host("client", "bash", "-c", "curl -sS --max-time 30 http://"+vip+m.port+"/files/20M.bin | sha256sum")
					if f := strings.Fields(got); len(f) == 0 || f[0] != sum {
						t.Fatalf("%s download %d over two workers: sha256 %q, want %s", m.name, i, got, sum)
					}
				}
				need(t, "wrk")
				wout := e.host("client", "wrk", "-t2", "-c8", "-d3s", "http://"+vip+m.port+"/")
				t.Logf("%s: %s", m.name, wout)
				wrkClean(t, wout)
			}
			if n := e.datapathCounter("handed_off"); n == 0 {
				t.Errorf("no packet was handed to its owner: RSS put every reply on its connection's worker?")
			}
			// The per-real counters are the workers' sums.
			stats := e.mustMbx("ipvsadm", "-ln", "--stats")
			for _, rs := range []string{"198.18.1.2:80", "198.18.1.3:80"} {
				if !strings.Contains(stats, rs) {
					t.Errorf("ipvsadm -ln --stats lacks %s:\n%s", rs, stats)
				}
			}
			if e.datapathCounter("conn_new") < 20 {
				t.Errorf("conn_new %d over both workers, want at least the 20 curl connections", e.datapathCounter("conn_new"))
			}
			// Per worker, in the status (and as mbx_worker_packets).
			var st struct{ Workers []backend.WorkerCounters }
			if err := json.Unmarshal([]byte(e.host("lb", "curl", "-s", "--unix-socket", e.socket, "http://mbx/v1/status")), &st); err != nil {
				t.Fatal(err)
			}
			if len(st.Workers) != 2 || st.Workers[0].Rx == 0 || st.Workers[1].Rx == 0 || st.Workers[0].Taken+st.Workers[1].Taken == 0 {
				t.Errorf("per-worker counters: %+v", st.Workers)
			}
			// A ring fills only when its consumer is preempted: on this
			// 2-core machine the workers share the CPUs with the kernel,
			// wrk and nginx. Rare, and TCP recovers (the checks above).
			if n, h := e.datapathCounter("drop_handoff"), e.datapathCounter("handed_off"); n*100 > h {
				t.Errorf("%d of %d handed packets dropped on full rings", n, h)
			}
			t.Logf("workers: %+v", st.Workers)
		})
	}
}

// TestDPDKTap: the exception path. The kernel's wan0 (DPDK's port) has no
// address; mbx's TAP interface mbxk0 carries the port's MAC and address,
// so a kernel service on the node (an HTTP server on 198.18.0.1:8080, what
// ssh would be) is reached through DPDK: mbx passes what is not its
// business to the TAP, the kernel resolves the client through it (ARP
// replies are passed too) and its answers leave through the port. The
// load balancer keeps working beside it, and the TAP is gone after stop.
// Two workers, each with its own queue of the TAP.
func TestDPDKTap(t *testing.T) {
	bin := buildDPDK(t)
	e, _ := twoArmNoDaemon(t)
	e.dpdkOffloads()
	e.host("lb", "ip", "addr", "flush", "dev", "wan0")
	e.background("lb", mbxBin, "lab", "serve", "--name", "lbnode", "--listen", "0.0.0.0:8080")
	// Two workers: the TAP has a queue pair per worker.
	eal := "-l 0,1 --no-pci --no-huge -m 1024 --vdev=net_af_packet0,iface=wan0,qpairs=2 --vdev=net_af_packet1,iface=lan0,qpairs=2"
	saved := mbxBin
	mbxBin = bin
	e.startDaemon("--backend", "dpdk", "--eal", eal, "--conn-max", "65536",
		"--port", "net_af_packet0=198.18.0.1/24", "--port", "net_af_packet1=198.18.1.1/24", "--tap", "net_af_packet0=mbxk0")
	mbxBin = saved
	addr, link := e.host("lb", "ip", "-br", "addr", "show", "mbxk0"), e.host("lb", "ip", "link", "show", "mbxk0")
	if mac := strings.Fields(e.host("lb", "cat", "/sys/class/net/wan0/address"))[0]; !strings.Contains(addr, "198.18.0.1/24") ||
		!strings.Contains(link, ",UP") || !strings.Contains(link, mac) {
		t.Fatalf("the TAP interface should be up with wan0's MAC %s and address:\n%s%s", mac, addr, link)
	}
	e.waitTCP("lb", "127.0.0.1:8080")
	out := e.curl("http://198.18.0.1:8080/")
	if !strings.HasPrefix(out, "lbnode: ") || !strings.Contains(out, "198.18.0.2:") {
		t.Fatalf("a kernel service on the node through the TAP: %q", out)
	}
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		-a -t 198.18.0.100:80 -r 198.18.1.3 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F net_af_packet1`)
	c := countFirstWords(e.curl("-H", "Connection: close", "http://"+vip+"/?[1-10]"))
	if c["rs1"] != 5 || c["rs2"] != 5 {
		t.Fatalf("the load balancer beside the TAP: %v", c)
	}
	for range 3 { // the kernel's service again, between balanced flows
		if out := e.curl("http://198.18.0.1:8080/"); !strings.HasPrefix(out, "lbnode: ") {
			t.Fatalf("kernel service: %q", out)
		}
	}
	// IPv6 services need an IPv6 address on the ports: refused whole.
	e.refused("needs an IPv6 address", "ipvsadm", "-A", "-t", "[fd00:198::a:100]:80", "-s", "rr")
	e.stopDaemon()
	if out, err := e.lab.Run("lb", "ip", "link", "show", "mbxk0"); err == nil {
		t.Errorf("mbxk0 still exists after mbx stopped: %s", out)
	}
}

// TestDPDKIPv6: IPv6 Full-NAT and NAT64 through the DPDK backend (two
// workers on net_af_packet, no hugepages: replies reach the connection's
// worker whichever queue they land on): mbx answers neighbour solicitations for the
// VIP and the LIP and solicits the real servers itself; curl under rr
// reaches both from the IPv6 LIP, and sha256-checked 20 MB downloads
// complete, through Full-NAT and NAT64. The IPv4 service on the same ports
// keeps working.
func TestDPDKIPv6(t *testing.T) {
	bin := buildDPDK(t)
	e, sum := twoArmNoDaemon(t)
	e.dpdkOffloads()
	// The data plane from the YAML file's dpdk section this time.
	conf := filepath.Join(e.dir, "mbx.yaml")
	if err := os.WriteFile(conf, []byte(`dpdk:
  eal: "-l 0,1 --no-pci --no-huge -m 1024 --vdev=net_af_packet0,iface=wan0,qpairs=2 --vdev=net_af_packet1,iface=lan0,qpairs=2"
  ports: [net_af_packet0=198.18.0.1/24, "net_af_packet0=fd00:198::a:1/112", net_af_packet1=198.18.1.1/24, "net_af_packet1=fd00:198::b:1/112"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	saved := mbxBin
	mbxBin = bin
	e.startDaemon("--backend", "dpdk", "--config", conf, "--conn-max", "65536")
	mbxBin = saved
	e.ipvsadm(`
		-A -t [fd00:198::a:100]:80 -s rr
		-a -t [fd00:198::a:100]:80 -r [fd00:198::b:2] -b
		-a -t [fd00:198::a:100]:80 -r [fd00:198::b:3] -b
		--add-laddr -z fd00:198::b:200 -t [fd00:198::a:100]:80 -F net_af_packet1
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F net_af_packet1`)
	// mbx answers neighbour solicitations and ping for the VIP itself.
	e.host("client", "ping", "-6", "-c", "2", "-W", "2", vip6)
	out := e.curl6(10)
	c := countFirstWords(out)
	if c["rs1"] != 5 || c["rs2"] != 5 || !strings.Contains(out, "fd00:198::b:200") {
		t.Fatalf("IPv6 rr through DPDK: %v, want 5/5 from the IPv6 LIP:\n%s", c, out)
	}
	for i := range 2 {
		got := e.host("client", "bash", "-c", "curl -g -sS --max-time 30 '"+url6("/files/20M.bin")+"' | sha256sum")
		if f := strings.Fields(got); len(f) == 0 || f[0] != sum {
			t.Fatalf("IPv6 download %d through DPDK: sha256 %q, want %s", i, got, sum)
		}
	}
	if out := e.curl("http://" + vip + "/"); !strings.HasPrefix(out, "rs1 198.18.1.200:") {
		t.Errorf("IPv4 beside IPv6 on DPDK: %q", out)
	}
	if lnc := e.mustMbx("ipvsadm", "-lnc"); !strings.Contains(lnc, "[fd00:198::a:100]:80") {
		t.Errorf("ipvsadm -lnc lacks the IPv6 connections:\n%s", lnc)
	}
	// NAT64: the IPv6 VIP in front of an IPv4 real server, from an IPv4 LIP.
	e.ipvsadm(`
		-A -t [fd00:198::a:100]:8080 -s rr
		-a -t [fd00:198::a:100]:8080 -r 198.18.1.3:80 -b
		--add-laddr -z 198.18.1.201 -t [fd00:198::a:100]:8080 -F net_af_packet1`)
	if out := e.curl("-g", url6(":8080/")); !strings.HasPrefix(out, "rs2 198.18.1.201:") {
		t.Fatalf("NAT64 through DPDK: %q", out)
	}
	got := e.host("client", "bash", "-c", "curl -g -sS --max-time 30 'http://["+vip6+"]:8080/files/20M.bin' | sha256sum")
	if f := strings.Fields(got); len(f) == 0 || f[0] != sum {
		t.Fatalf("NAT64 download through DPDK: sha256 %q, want %s", got, sum)
	}
}

// Bad input to the dpdk backend: one line naming the fix, no hang, nothing
// left in /var/run/dpdk.
func TestDPDKBadInput(t *testing.T) {
	bin := buildDPDK(t)
	dir := t.TempDir()
	noHuge := "-l 0 --no-huge --no-pci -m 256 --vdev=net_null0"
	badPin := filepath.Join(dir, "badpin") // a state file this mbx did not write
	if err := os.MkdirAll(badPin, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(badPin, "dpdk-state.gob"), []byte("not gob"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no port", []string{"--eal", noHuge}, "needs --port"},
		{"no eal", []string{"--port", "net_null0=198.18.0.1/24"}, "needs --eal"},
		{"bad port", []string{"--eal", noHuge, "--port", "net_null0=198.18.0.1"}, "give NAME=A.B.C.D/LEN"},
		{"iface", []string{"--eal", noHuge, "--port", "net_null0=198.18.0.1/24", "--iface", "lo"}, "given with --port"},
		{"bad eal", []string{"--eal", "-l 0 --no-huge --bogus", "--port", "net_null0=198.18.0.1/24"}, "EAL initialisation"},
		{"missing port", []string{"--eal", noHuge, "--port", "net_null7=198.18.0.1/24"}, "--vdev=net_null7"},
		{"no hugepages", []string{"--eal", "-l 0 --no-pci -m 256", "--port", "net_null0=198.18.0.1/24"}, "--no-huge"},
		{"bad route", []string{"--eal", noHuge, "--port", "net_null0=198.18.0.1/24", "--route", "198.18.5.0/24"}, "DST/LEN=GATEWAY"},
		{"gateway off-link", []string{"--eal", noHuge, "--port", "net_null0=198.18.0.1/24", "--route", "198.18.5.0/24=198.18.9.1"}, "on no port's network"},
		{"tap of no port", []string{"--eal", noHuge, "--port", "net_null0=198.18.0.1/24", "--tap", "net_null1=mbxk0"}, "give PORT=IFNAME"},
		{"tap name taken", []string{"--eal", noHuge, "--port", "net_null0=198.18.0.1/24", "--tap", "net_null0=lo"}, "already exists"},
		{"unreadable saved state", []string{"--eal", noHuge, "--port", "net_null0=198.18.0.1/24", "--pin-dir", badPin}, "--fresh"},
		{"fewer queues than workers", []string{"--eal", "-l 0,1 --no-huge --no-pci -m 256 --vdev=net_af_packet0,iface=lo", "--port", "net_af_packet0=198.18.0.1/24"}, "needs 2 queues"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"run", "--backend", "dpdk", "--socket", filepath.Join(dir, "mbx.sock")}, c.args...)
			cmd := exec.Command(bin, args...)
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatal("mbx run did not exit")
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			last := lines[len(lines)-1]
			if err == nil || !strings.HasPrefix(last, "mbx: ") || !strings.Contains(last, c.want) {
				t.Errorf("exit %v, last line %q; want an error with %q", err, last, c.want)
			}
			if _, err := os.Stat("/var/run/dpdk"); err == nil {
				t.Errorf("/var/run/dpdk left behind")
				os.RemoveAll("/var/run/dpdk")
			}
		})
	}
}

// withHugepages makes n 2 MB hugepages available (mounting hugetlbfs on
// /dev/hugepages when it is not) and puts back what it changed when the
// test ends; it skips when the kernel cannot give them.
func withHugepages(t *testing.T, n int) {
	const knob = "/proc/sys/vm/nr_hugepages"
	old, err := os.ReadFile(knob)
	if err != nil {
		t.Skipf("hugepages: %v", err)
	}
	if err := os.WriteFile(knob, []byte(strconv.Itoa(n)), 0o644); err != nil {
		t.Skipf("hugepages: %v", err)
	}
	t.Cleanup(func() { _ = os.WriteFile(knob, old, 0o644) })
	got, _ := os.ReadFile(knob)
	if v, _ := strconv.Atoi(strings.TrimSpace(string(got))); v < n {
		t.Skipf("the kernel gave %d of %d hugepages", v, n)
	}
	mounts, _ := os.ReadFile("/proc/mounts")
	if !strings.Contains(string(mounts), " hugetlbfs ") {
		if err := os.MkdirAll("/dev/hugepages", 0o755); err != nil {
			t.Skipf("hugepages: %v", err)
		}
		if out, err := exec.Command("mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages").CombinedOutput(); err != nil {
			t.Skipf("mounting hugetlbfs: %v: %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("umount", "/dev/hugepages").Run() })
	}
}

// TestDPDKInline: the stream monitor inline between two DPDK ports (two
// workers, net_af_packet): mbx run --inline is mOS's midstat on DPDK, with
// ping, wrk, a sha256-checked download and iperf3 through it and every
// connection started and ended; then the inline firewall example on the
// same ports blocks the connection that sends the forbidden request and
// rewrites the server's answers, its handlers running on the workers.
func TestDPDKInline(t *testing.T) {
	bin := buildDPDK(t)
	e, sum := inlineEnv(t)
	for _, h := range []struct{ host, dev string }{{"client", "eth0"}, {"srv", "eth0"}, {"lb", "in0"}, {"lb", "in1"}} {
		e.host(h.host, "ethtool", "-K", h.dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off")
	}
	eal := "-l 0,1 --no-pci --no-huge -m 1024 --vdev=net_af_packet0,iface=in0,qpairs=2 --vdev=net_af_packet1,iface=in1,qpairs=2"
	logPath := filepath.Join(t.TempDir(), "events.jsonl")
	saved := mbxBin
	mbxBin = bin
	e.startDaemon("--backend", "dpdk", "--eal", eal, "--port", "net_af_packet0", "--port", "net_af_packet1",
		"--inline", "net_af_packet0:net_af_packet1", "--monitor-log", logPath)
	mbxBin = saved
	e.midstatTraffic(sum, logPath)
	st := e.monitorStatus(t)
	if !st.Inline || st.Stats.ToGo == 0 || st.Stats.GoDropped != 0 || st.Stats.GoForwarded != st.Stats.ToGo {
		t.Errorf("everything through the Go tracker, nothing dropped: %+v", st.Stats)
	}
	e.stopDaemon()

	fw := e.startFirewall("dpdk", "-backend", "dpdk", "-eal", eal, "-pair", "net_af_packet0:net_af_packet1")
	e.blockAndRewrite()
	wrkClean(t, e.host("client", "wrk", "-t1", "-c4", "-d2s", "http://198.18.6.10/"))
	e.download(sum)
	e.host("client", "iperf3", "-c", "198.18.6.10", "-p", "5201", "-n", "20M")
	fw.stop(t)
	t.Logf("%s", fw.output())
}

// realInBytes is a real server's InBytes from ipvsadm -ln --stats --exact.
func (e *env) realInBytes(real string) uint64 {
	for _, l := range strings.Split(e.mustMbx("ipvsadm", "-ln", "--stats", "--exact"), "\n") {
		if f := strings.Fields(l); len(f) == 7 && f[0] == "->" && f[1] == real {
			n, err := strconv.ParseUint(f[5], 10, 64)
			if err != nil {
				e.t.Fatalf("ipvsadm --stats line %q: %v", l, err)
			}
			return n
		}
	}
	e.t.Fatalf("ipvsadm -ln --stats has no real server %s", real)
	return 0
}

// TestDPDKRestartWithoutLoss: issue 4's restart without loss on the dpdk
// backend (two workers, net_af_packet). `mbx stop --keep-datapath` and
// SIGUSR2 (an upgrade to another binary) save the connections; the next
// `mbx run` restores the configuration and puts each connection back on
// its owner. wrk (a generous timeout: nothing forwards for the second the
// EAL takes to start) and an iperf3 transfer run across both restarts
// without a failed request, and the transfer completes.
func TestDPDKRestartWithoutLoss(t *testing.T) {
	bin := buildDPDK(t)
	need(t, "wrk", "iperf3")
	e, _ := twoArmNoDaemon(t)
	e.dpdkOffloads()
	pin := filepath.Join(e.dir, "pin")
	upgraded := filepath.Join(e.dir, "mbx-dpdk-new")
	copyFile(t, bin, upgraded)
	eal := "-l 0,1 --no-pci --no-huge -m 1024 --vdev=net_af_packet0,iface=wan0,qpairs=2 --vdev=net_af_packet1,iface=lan0,qpairs=2"
	start := func(b string, extra ...string) {
		saved := mbxBin
		mbxBin = b
		e.startDaemon(append([]string{"--backend", "dpdk", "--eal", eal, "--conn-max", "65536", "--pin-dir", pin,
			"--port", "net_af_packet0=198.18.0.1/24", "--port", "net_af_packet1=198.18.1.1/24"}, extra...)...)
		mbxBin = saved
	}
	start(bin)
	e.ipvsadm(`
		-A -t 198.18.0.100:80 -s rr
		-a -t 198.18.0.100:80 -r 198.18.1.2 -b
		-a -t 198.18.0.100:80 -r 198.18.1.3 -b
		--add-laddr -z 198.18.1.200 -t 198.18.0.100:80 -F net_af_packet1
		-A -t 198.18.0.100:5201 -s rr
		-a -t 198.18.0.100:5201 -r 198.18.1.2 -b
		--add-laddr -z 198.18.1.201 -t 198.18.0.100:5201 -F net_af_packet1`)
	e.background("rs1", "iperf3", "-s", "-p", "5201")
	e.waitTCP("rs1", "127.0.0.1:5201")
	before := e.mustMbx("ipvsadm", "-S", "-n")

	wrk := e.lab.Command("client", "wrk", "-t2", "-c16", "-d12s", "--timeout", "10s", "http://"+vip+"/")
	var wrkOut strings.Builder
	wrk.Stdout, wrk.Stderr = &wrkOut, &wrkOut
	// Bounded: connections the restart lost would hang it.
	iperf := e.lab.Command("client", "timeout", "40", "iperf3", "-c", vip, "-t", "11", "-J")
	var iperfOut strings.Builder
	iperf.Stdout = &iperfOut
	for _, c := range []interface{ Start() error }{wrk, iperf} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	restart := func(how, b string) {
		bytesBefore := e.realInBytes("198.18.1.2:5201")
		e.handOver(how)
		start(b)
		// The IPVS counters continue from where they were (as XDP's
		// pinned maps keep them): iperf3 has sent more since.
		if got := e.realInBytes("198.18.1.2:5201"); got < bytesBefore {
			t.Errorf("%s: the iperf3 real server's InBytes went from %d to %d", how, bytesBefore, got)
		}
		if got := e.mustMbx("ipvsadm", "-S", "-n"); got != before {
			t.Fatalf("configuration after restart:\n%s\nwant:\n%s", got, before)
		}
		if lnc := e.mustMbx("ipvsadm", "-lnc"); !strings.Contains(lnc, "198.18.1.2:5201") {
			t.Errorf("the iperf3 connection is not in the restored table:\n%s", lnc)
		}
	}
	time.Sleep(2 * time.Second) // counters worth keeping
	restart("stop", bin)
	restart("usr2", upgraded)
	wrkDone(t, wrk, &wrkOut)
	iperfDone(t, iperf, &iperfOut, "iperf3")
	l, _ := os.ReadFile(e.log)
	if !strings.Contains(string(l), "connections of the previous run restored") {
		t.Errorf("no restore in the log:\n%s", l)
	}
	// --fresh discards what a keep-datapath stop saved.
	e.mustMbx("stop", "--keep-datapath")
	e.daemon.Wait()
	e.daemon = nil
	start(bin, "--fresh")
	if got := e.mustMbx("ipvsadm", "-S", "-n"); strings.TrimSpace(got) != "" {
		t.Fatalf("--fresh kept: %s", got)
	}
	if _, err := os.Stat(filepath.Join(pin, "dpdk-state.gob")); err == nil {
		t.Error("--fresh left the saved connections")
	}
}

package ipvsadm

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/lb"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line string
		want string // op kind, or action name
		err  string
	}{
		{"-A -t 10.0.0.100:80 -s rr", "add-service", ""},
		{"-A -t10.0.0.100:80 -srr", "add-service", ""},
		{"--add-service --tcp-service=10.0.0.100:80 --scheduler wrr", "add-service", ""},
		{"-E -u 10.0.0.100:53 -s wrr", "edit-service", ""},
		{"-D -t 10.0.0.100:80", "del-service", ""},
		{"-C", "clear", ""},
		{"-a -t 10.0.0.100:80 -r 192.168.100.2 -b", "add-real", ""},
		{"-a -t 10.0.0.100:80 -r 192.168.100.2:8080 -b -w 3", "add-real", ""},
		{"-e -t 10.0.0.100:80 -r 192.168.100.2 -b -w 0", "edit-real", ""},
		{"-d -t 10.0.0.100:80 -r 192.168.100.2", "del-real", ""},
		{"--add-laddr -z 192.168.100.200 -t 10.0.0.100:80 -F dpdk0", "add-laddr", ""},
		{"-P -z 192.168.100.200 -t 10.0.0.100:80 -F dpdk0", "add-laddr", ""},
		{"--del-laddr -z 192.168.100.200 -t 10.0.0.100:80", "del-laddr", ""},
		{"-ln", "list", ""},
		{"-lnc", "list", ""},
		{"-L -n --stats", "list", ""},
		{"-G", "get-laddr", ""},
		{"-S -n", "save", ""},
		{"-R", "restore", ""},
		{"--set 900 120 300", "set-timeouts", ""},
		{"-L --timeout", "list", ""},
		{"--set 900 120", "", "three values"},
		{"--set 900 x 300", "", "bad timeout"},
		{"-A -t 10.0.0.100 -s rr", "", "malformed address"},
		{"-A -t 10.0.0.100:80 -s nope", "", "unknown scheduler"},
		{"-a -t 10.0.0.100:80 -r 192.168.100.2", "add-real", ""},
		{"-a -t 10.0.0.100:80 -r 192.168.100.2 -m", "add-real", ""},
		{"-a -t 10.0.0.100:80 -r 192.168.100.2 -i", "add-real", ""},
		{"-a -t 10.0.0.100:80 -r 192.168.100.2 -b -g", "", "only one forwarding method"},
		{"-a -t 10.0.0.100:80 -b", "", "no real server"},
		{"-a -r 192.168.100.2 -b", "", "no service"},
		{"-A -D -t 10.0.0.100:80", "", "two commands"},
		{"--add-laddr -z 192.168.100.200 -t 10.0.0.100:80", "", "-F DEV"},
		{"--add-laddr -z nope -t 10.0.0.100:80 -F x", "", "malformed local address"},
		{"-A -t 10.0.0.100:80 -p 60", "add-service", ""},
		{"-A -t 10.0.0.100:80 -s rr -p", "add-service", ""},
		{"-A -t 10.0.0.100:80 -p x", "", "illegal persistence timeout"},
		{"-t 10.0.0.100:80", "", "no command"},
		{"-A -t", "", "needs an argument"},
		{"-Y", "", "unknown option"},
		{"-A extra", "", "unexpected argument"},
	} {
		c, err := Parse(strings.Fields(tc.line))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.line, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		got := map[Action]string{ActionList: "list", ActionSave: "save", ActionRestore: "restore", ActionGetLaddr: "get-laddr"}[c.Action]
		if c.Action == ActionOps {
			got = string(c.Ops[0].Kind)
		}
		if got != tc.want {
			t.Errorf("%q: %s, want %s", tc.line, got, tc.want)
		}
	}
}

func TestParsedFields(t *testing.T) {
	c, err := Parse(strings.Fields("-a -t 10.0.0.100:80 -r 192.168.100.2 -b -w 5"))
	if err != nil {
		t.Fatal(err)
	}
	op := c.Ops[0]
	want := lb.Real{Addr: netip.MustParseAddr("192.168.100.2"), Port: 80, Weight: 5, Forward: lb.FullNAT}
	if op.Real != want || op.Service.Port != 80 || op.Service.Proto != lb.TCP {
		t.Fatalf("parsed %+v", op)
	}
	for line, want := range map[string]int{"-A -t 10.0.0.100:80 -p 60": 60, "-A -t 10.0.0.100:80 -p -s rr": 360, "-A -t 10.0.0.100:80": 0, "-E -t 10.0.0.100:80 -s rr": -1} {
		c, err := Parse(strings.Fields(line))
		if err != nil || c.Ops[0].Persistence != want {
			t.Errorf("%q: persistence %v (%v), want %d", line, c, err, want)
		}
	}
	c, _ = Parse(strings.Fields("-lnc --stats -x"))
	if !c.Numeric || !c.Conns || !c.Stats || !c.Exact {
		t.Fatalf("flags %+v", c)
	}
}

// The listing is byte-for-byte what the DPVS tutorial shows.
func TestListMatchesTutorial(t *testing.T) {
	st := &control.Status{ConnsMax: 0, Services: []control.ServiceStatus{{
		Service: lb.Service{Key: lb.ServiceKey{Proto: lb.TCP, Addr: netip.MustParseAddr("10.0.0.100"), Port: 80}, Scheduler: "rr"},
		RealStats: []control.RealStatus{
			{Real: lb.Real{Addr: netip.MustParseAddr("192.168.100.2"), Port: 80, Weight: 1, Forward: lb.FullNAT}},
			{Real: lb.Real{Addr: netip.MustParseAddr("192.168.100.3"), Port: 80, Weight: 1, Forward: lb.FullNAT}},
		},
		LaddrStats: []control.LaddrStatus{{LocalAddr: lb.LocalAddr{Addr: netip.MustParseAddr("192.168.100.200"), Dev: "dpdk0"}}},
	}}}
	var b bytes.Buffer
	List(&b, &Command{Numeric: true}, st)
	want := `IP Virtual Server version 1.2.1 (size=0)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.100:80 rr
  -> 192.168.100.2:80             FullNat 1      0          0
  -> 192.168.100.3:80             FullNat 1      0          0
`
	if got := trimLines(b.String()); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	GetLaddr(&b, &Command{}, st)
	wantG := `VIP:VPORT            TOTAL    SNAT_IP              CONFLICTS  CONNS
10.0.0.100:80        1
                              192.168.100.200      0          0
`
	if got := trimLines(b.String()); got != wantG {
		t.Fatalf("got:\n%s\nwant:\n%s", got, wantG)
	}
}

func trimLines(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		out = append(out, strings.TrimRight(l, " "))
	}
	return strings.Join(out, "\n")
}

func TestStatsAndSaveRoundTrip(t *testing.T) {
	cfg, err := (&lb.Config{}).Do(mustLines(t, `
		-A -t 10.0.0.100:80 -s wrr
		-a -t 10.0.0.100:80 -r 192.168.100.2:8080 -b -w 3
		--add-laddr -z 192.168.100.200 -t 10.0.0.100:80 -F lan0
		-A -u 10.0.0.100:53 -s rr
		-a -u 10.0.0.100:53 -r 192.168.100.3 -b`))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	Save(&b, &Command{}, cfg)
	again, err := (&lb.Config{}).Do(mustLines(t, b.String()))
	if err != nil {
		t.Fatalf("restoring %q: %v", b.String(), err)
	}
	var b2 bytes.Buffer
	Save(&b2, &Command{}, again)
	if b.String() != b2.String() {
		t.Fatalf("save/restore/save differs:\n%s\n%s", b.String(), b2.String())
	}
	st := &control.Status{Services: []control.ServiceStatus{{Service: *cfg.Services[0],
		Stats: backend.Counters{Conns: 17, InPkts: 112, OutPkts: 89, InBytes: 10345, OutBytes: 123456789012}}}}
	b.Reset()
	List(&b, &Command{Stats: true}, st)
	if !strings.Contains(b.String(), "TCP  10.0.0.100:80                      17      112       89    10345  123456M") {
		t.Fatalf("stats line:\n%s", b.String())
	}
}

func mustLines(t *testing.T, s string) []lb.Op {
	ops, err := ParseLines(s)
	if err != nil {
		t.Fatal(err)
	}
	return ops
}

func TestSNATMatchRoundTrip(t *testing.T) {
	ops, err := ParseLines(`-A -s rr -H proto=tcp,src-range=198.18.2.0-198.18.2.254,oif=wan0
-a -H proto=tcp,src-range=198.18.2.0-198.18.2.254,oif=wan0 -r 198.18.3.1:0 -w 100 -J`)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(ops)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	Save(&b, &Command{}, cfg)
	want := "-A -H proto=tcp,src-range=198.18.2.0-198.18.2.254,oif=wan0 -s rr\n-a -H proto=tcp,src-range=198.18.2.0-198.18.2.254,oif=wan0 -r 198.18.3.1:0 -J -w 100\n"
	if b.String() != want {
		t.Errorf("-S:\n%s\nwant:\n%s", b.String(), want)
	}
	for _, bad := range []struct{ line, want string }{
		{"-A -s rr -H proto=tcp", "matches every packet"},
		{"-A -s rr -H proto=sctp,oif=wan0", "unknown proto"},
		{"-A -s rr -H proto=tcp,src-range=1.2.3.9-1.2.3.1", "bad range"},
	} {
		if _, err := ParseLines(bad.line); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want %q", bad.line, err, bad.want)
		}
	}
	// SNAT without a match, and a match with a non-SNAT real server.
	for _, bad := range []string{
		"-A -t 198.18.0.100:80 -s rr\n-a -t 198.18.0.100:80 -r 198.18.3.1 -J",
		"-A -s rr -H proto=udp,oif=wan0\n-a -H proto=udp,oif=wan0 -r 198.18.3.1:0 -b",
	} {
		ops, err := ParseLines(bad)
		if err == nil {
			_, err = (&lb.Config{}).Do(ops)
		}
		if err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// IPv6 services (Full-NAT, NAT64, DR, tunnel) list with bracketed
// addresses and survive -S then -R.
func TestIPv6SaveRoundTrip(t *testing.T) {
	cfg, err := (&lb.Config{}).Do(mustLines(t, `
		-A -t [fd00:198::a:100]:80 -s rr
		-a -t [fd00:198::a:100]:80 -r [fd00:198::b:2]:8080 -b -w 2
		--add-laddr -z fd00:198::b:200 -t [fd00:198::a:100]:80 -F lan0
		-A -u [fd00:198::a:100]:53 -s sh
		-a -u [fd00:198::a:100]:53 -r 198.18.1.2 -b
		--add-laddr -z 198.18.1.200 -u [fd00:198::a:100]:53 -F lan0
		-A -t [fd00:198::a:100]:443 -s wlc
		-a -t [fd00:198::a:100]:443 -r [fd00:198::b:3] -g
		-a -t [fd00:198::a:100]:443 -r [fd00:198::c:7] -i`))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	Save(&b, &Command{}, cfg)
	again, err := (&lb.Config{}).Do(mustLines(t, b.String()))
	if err != nil {
		t.Fatalf("restoring %q: %v", b.String(), err)
	}
	var b2 bytes.Buffer
	Save(&b2, &Command{}, again)
	if b.String() != b2.String() || !strings.Contains(b.String(), "-A -t [fd00:198::a:100]:80 -s rr") {
		t.Fatalf("save/restore/save:\n%s\n%s", b.String(), b2.String())
	}
	st := &control.Status{}
	for _, s := range cfg.Services {
		ss := control.ServiceStatus{Service: *s}
		for _, r := range s.Reals {
			ss.RealStats = append(ss.RealStats, control.RealStatus{Real: r})
		}
		st.Services = append(st.Services, ss)
	}
	b.Reset()
	List(&b, &Command{}, st)
	for _, want := range []string{"TCP  [fd00:198::a:100]:80 rr", "-> [fd00:198::b:2]:8080", "FullNat 2", "-> 198.18.1.2:53", "Route", "Tunnel"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("-ln lacks %q:\n%s", want, b.String())
		}
	}
}

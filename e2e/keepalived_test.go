package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The DPVS tutorial's keepalived.conf (lab addresses) drives the two-arm
// Full-NAT setup; a broken file is refused with file:line.
func TestKeepalivedConf(t *testing.T) {
	e, _ := twoArmNoDaemon(t)
	conf, err := filepath.Abs("../keepalived/testdata/tutorial.conf")
	if err != nil {
		t.Fatal(err)
	}
	e.host("lb", "ip", "addr", "add", vip+"/32", "dev", "wan0") // the tutorial's VRRP VIP
	e.startDaemon("--iface", "wan0", "--iface", "lan0", "--keepalived-conf", conf)
	listing := e.mustMbx("ipvsadm", "-ln")
	for _, want := range []string{"TCP  198.18.0.100:80 rr", "198.18.1.2:80                FullNat 100", "198.18.1.3:80                FullNat 100"} {
		if !strings.Contains(listing, want) {
			t.Fatalf("-ln lacks %q:\n%s", want, listing)
		}
	}
	if g := e.mustMbx("ipvsadm", "-G"); !strings.Contains(g, "198.18.1.200") || !strings.Contains(g, "198.18.1.201") {
		t.Fatalf("-G:\n%s", g)
	}
	c := countFirstWords(e.curl("-H", "Connection: close", "http://"+vip+"/?[1-10]"))
	if c["rs1"] != 5 || c["rs2"] != 5 {
		t.Fatalf("split %v", c)
	}
	e.stopDaemon()

	bad := filepath.Join(e.dir, "bad.conf")
	os.WriteFile(bad, []byte("virtual_server 198.18.0.100 80 {\n    lb_algo rr\n    lb_kind BOGUS\n}\n"), 0o644)
	out, err := e.lab.Command("lb", mbxBin, "keepalived", "check", bad).CombinedOutput()
	oneLineError(t, string(out), err, "bad.conf:3: lb_kind BOGUS")
	out, err = e.lab.Command("lb", mbxBin, "run", "--iface", "wan0", "--keepalived-conf", bad, "--socket", filepath.Join(e.dir, "k.sock")).CombinedOutput()
	oneLineError(t, string(out), err, "bad.conf:3:")
	if x, _ := e.lab.Run("lb", "ip", "link", "show", "wan0"); strings.Contains(x, "xdp") {
		t.Fatalf("XDP left attached after a refused config:\n%s", x)
	}
}

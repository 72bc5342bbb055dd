package keepalived

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mbx-net/mbx/lb"
)

func TestTutorialConfig(t *testing.T) {
	res, err := Load("testdata/tutorial.conf")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(res.Ops)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Services) != 1 {
		t.Fatalf("%d services", len(cfg.Services))
	}
	s := cfg.Services[0]
	if s.Key.String() != "TCP 198.18.0.100:80" || s.Scheduler != "rr" || len(s.Reals) != 2 || len(s.LocalAddrs) != 2 {
		t.Fatalf("service %+v", s)
	}
	r := s.Reals[0]
	want := lb.Check{Type: "tcp", Port: 80, Interval: 3 * time.Second, Timeout: 3 * time.Second, Retries: 2}
	if r.Weight != 100 || !r.InhibitOnFailure || r.Check != want || r.Port != 80 {
		t.Fatalf("real %+v", r)
	}
	// global_defs and vrrp_instance are reported, with their lines.
	got := strings.Join(res.Warnings, "\n")
	for _, w := range []string{"tutorial.conf:4: global_defs", "tutorial.conf:22: vrrp_instance"} {
		if !strings.Contains(got, w) {
			t.Errorf("missing warning %q in:\n%s", w, got)
		}
	}
}

func TestErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"unclosed", "virtual_server 198.18.0.100 80 {\n  lb_algo rr\n", "f.conf:1: block \"virtual_server\" is not closed"},
		{"stray brace", "}\n", "f.conf:1: unexpected }"},
		{"unknown algo", "virtual_server 198.18.0.100 80 {\n  lb_algo fastest\n}\n", "f.conf:2: lb_algo fastest"},
		{"lblc not supported", "virtual_server 198.18.0.100 80 {\n  lb_algo lblc\n}\n", "f.conf:2: lb_algo lblc is not supported"},
		{"unknown lb_kind", "virtual_server 198.18.0.100 80 {\n  lb_kind BOGUS\n}\n", "f.conf:2: lb_kind BOGUS"},
		{"persistence granularity", "virtual_server 198.18.0.100 80 {\n  persistence_granularity 255.255.255.0\n}\n", "f.conf:2: persistence_granularity is not supported"},
		{"bad vip", "virtual_server 198.18.0.999 80 {\n}\n", "f.conf:1: bad virtual server address"},
		{"bad real", "virtual_server 198.18.0.100 80 {\n  real_server 198.18.1.x 80 {\n  }\n}\n", "f.conf:2: bad real server address"},
		{"unknown group", "virtual_server group nope {\n}\n", "f.conf:1: virtual_server_group \"nope\""},
		{"unknown laddr group", "virtual_server 198.18.0.100 80 {\n  laddr_group_name g\n}\n", "f.conf:2: local_address_group \"g\""},
		{"unknown check option", "virtual_server 198.18.0.100 80 {\n real_server 198.18.1.2 80 {\n  TCP_CHECK {\n   frobnicate 1\n  }\n }\n}\n", "f.conf:4: unknown TCP_CHECK keyword"},
		{"unknown top keyword", "virtual_sever 198.18.0.100 80 {\n}\n", "f.conf:1: unknown keyword"},
		{"duplicate service", "virtual_server 198.18.0.100 80 {\n}\nvirtual_server 198.18.0.100 80 {\n}\n", "already exists"},
	} {
		_, err := Parse("f.conf", tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestChecks(t *testing.T) {
	res, err := Parse("f.conf", `
virtual_server 198.18.0.100 443 {
  lb_algo mh
  real_server 198.18.1.2 8443 {
    weight 2
    SSL_GET {
      url {
        path /healthz
        status_code 204
      }
      connect_timeout 1.5
      nb_get_retry 3
    }
  }
  real_server 198.18.1.3 8443 {
    MISC_CHECK {
      misc_path "/usr/bin/check --host 198.18.1.3"
      misc_timeout 4
    }
  }
}
virtual_server 198.18.0.100 53 {
  protocol UDP
  real_server 198.18.1.4 53 {
    UDP_CHECK {
      connect_timeout 1
    }
  }
}`)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(res.Ops)
	if err != nil {
		t.Fatal(err)
	}
	var https, misc, udp lb.Check
	for _, s := range cfg.Services {
		for _, r := range s.Reals {
			switch r.Check.Type {
			case "https":
				https = r.Check
			case "misc":
				misc = r.Check
			case "udp":
				udp = r.Check
			}
		}
	}
	if https.Type != "https" || https.Path != "/healthz" || https.Status != 204 || https.Timeout != 1500*time.Millisecond || https.Retries != 3 {
		t.Fatalf("SSL_GET %+v", https)
	}
	if misc.Command != "/usr/bin/check --host 198.18.1.3" || misc.Timeout != 4*time.Second || udp.Timeout != time.Second {
		t.Fatalf("misc %+v udp %+v", misc, udp)
	}
}

// The DPVS tutorial's SNAT blocks (lab addresses): match services.
func TestSNATMatchServices(t *testing.T) {
	res, err := Parse("snat.conf", `virtual_server match SNAT1 {
    protocol UDP
    lb_algo rr
    lb_kind SNAT
    src-range 198.18.1.0-198.18.1.254
    oif wan0

    real_server 198.18.0.1 0 {
        weight 4
    }
}

virtual_server match SNAT2 {
    protocol ICMP
    lb_algo wrr
    lb_kind SNAT
    src-range 198.18.1.1-198.18.1.254
    dst-range 198.18.0.0-198.18.0.254
    oif wan0
    iif lan0

    real_server 198.18.0.1 0 {
        weight 4
    }
}
`)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(res.Ops)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range cfg.Services {
		got = append(got, s.Key.String()+" "+string(s.Reals[0].Forward))
	}
	want := "MATCH proto=icmp,src-range=198.18.1.1-198.18.1.254,dst-range=198.18.0.0-198.18.0.254,iif=lan0,oif=wan0 snat|MATCH proto=udp,src-range=198.18.1.0-198.18.1.254,oif=wan0 snat"
	if strings.Join(got, "|") != want {
		t.Errorf("got %q\nwant %q", strings.Join(got, "|"), want)
	}
	for _, bad := range []struct{ text, want string }{
		{"virtual_server match X {\n  protocol TCP\n  lb_kind SNAT\n}\n", "x.conf:1: match"},
		{"virtual_server match X {\n  protocol TCP\n  lb_kind FNAT\n  oif wan0\n}\n", "needs lb_kind SNAT"},
		{"virtual_server 198.18.0.100 80 {\n  lb_kind SNAT\n}\n", "needs a match service"},
		{"virtual_server 198.18.0.100 80 {\n  oif wan0\n}\n", "x.conf:2: oif belongs"},
	} {
		if _, err := Parse("x.conf", bad.text); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want %q", bad.text, err, bad.want)
		}
	}
}

// IPv6 services from keepalived.conf: an IPv6 Full-NAT service and a NAT64
// one (IPv6 VIP, IPv4 real server and LIP), as the DPVS tutorial writes
// them.
func TestIPv6Config(t *testing.T) {
	res, err := Load("testdata/ipv6.conf")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(res.Ops)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range cfg.Services {
		got = append(got, fmt.Sprintf("%s %s %s %s nat64=%v", s.Key, s.Reals[0].AddrPort(), s.Reals[0].Forward, s.LocalAddrs[0].Addr, s.IsNAT64()))
	}
	want := []string{
		"TCP [fd00:198::a:100]:80 [fd00:198::b:2]:80 fnat fd00:198::b:200 nat64=false",
		"TCP [fd00:198::a:100]:8080 198.18.1.2:80 fnat 198.18.1.200 nat64=true",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("services:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

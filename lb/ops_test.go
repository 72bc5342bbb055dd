package lb

import (
	"net/netip"
	"strings"
	"testing"
)

var (
	svc = ServiceKey{Proto: TCP, Addr: netip.MustParseAddr("198.18.0.100"), Port: 80}
	rs1 = Real{Addr: netip.MustParseAddr("198.18.1.2"), Port: 80, Weight: 1, Forward: FullNAT}
)

func TestOpsErrorsLeaveConfigUnchanged(t *testing.T) {
	base, err := (&Config{}).Do([]Op{{Kind: OpAddService, Service: svc, Scheduler: "rr"}, {Kind: OpAddReal, Service: svc, Real: rs1}})
	if err != nil {
		t.Fatal(err)
	}
	other := ServiceKey{Proto: TCP, Addr: netip.MustParseAddr("198.18.0.101"), Port: 80}
	v6 := ServiceKey{Proto: TCP, Addr: netip.MustParseAddr("fd00:198::1"), Port: 80}
	for _, tc := range []struct {
		name string
		ops  []Op
		want string
	}{
		{"duplicate service", []Op{{Kind: OpAddService, Service: svc, Scheduler: "rr"}}, "already exists"},
		{"missing service", []Op{{Kind: OpAddReal, Service: other, Real: rs1}}, "does not exist"},
		{"duplicate real", []Op{{Kind: OpAddReal, Service: svc, Real: rs1}}, "already exists"},
		{"unknown scheduler", []Op{{Kind: OpAddService, Service: other, Scheduler: "magic"}}, "unknown scheduler"},
		{"bad weight", []Op{{Kind: OpEditReal, Service: svc, Real: Real{Addr: rs1.Addr, Port: 80, Weight: 70000, Forward: FullNAT}}}, "weight"},
		{"family mismatch", []Op{{Kind: OpAddReal, Service: svc, Real: Real{Addr: netip.MustParseAddr("fd00:198::2"), Port: 80, Weight: 1, Forward: FullNAT}}}, "family"},
		{"nat64 with an ipv6 LIP", []Op{
			{Kind: OpAddService, Service: v6, Scheduler: "rr"},
			{Kind: OpAddReal, Service: v6, Real: rs1},
			{Kind: OpAddLaddr, Service: v6, Laddr: LocalAddr{Addr: netip.MustParseAddr("fd00:198::200"), Dev: "lan0"}}}, "NAT64"},
		{"nat64 by DR", []Op{
			{Kind: OpAddService, Service: v6, Scheduler: "rr"},
			{Kind: OpAddReal, Service: v6, Real: Real{Addr: rs1.Addr, Port: 80, Weight: 1, Forward: DirectRoute}}}, "NAT64"},
		{"ipv6 NAT", []Op{
			{Kind: OpAddService, Service: v6, Scheduler: "rr"},
			{Kind: OpAddReal, Service: v6, Real: Real{Addr: netip.MustParseAddr("fd00:198::2"), Port: 80, Weight: 1, Forward: Masquerade}}}, "IPv4 only"},
		{"both families", []Op{
			{Kind: OpAddService, Service: v6, Scheduler: "rr"},
			{Kind: OpAddReal, Service: v6, Real: rs1},
			{Kind: OpAddReal, Service: v6, Real: Real{Addr: netip.MustParseAddr("fd00:198::2"), Port: 80, Weight: 1, Forward: FullNAT}}}, "both families"},
		{"laddr without device", []Op{{Kind: OpAddLaddr, Service: svc, Laddr: LocalAddr{Addr: netip.MustParseAddr("198.18.1.200")}}}, "device"},
		{"laddr equal to a VIP", []Op{
			{Kind: OpAddService, Service: other, Scheduler: "rr"},
			{Kind: OpAddLaddr, Service: svc, Laddr: LocalAddr{Addr: other.Addr, Dev: "lan0"}}}, "local address"},
		{"second op fails", []Op{{Kind: OpAddService, Service: other, Scheduler: "rr"}, {Kind: OpDelService, Service: other}, {Kind: OpDelService, Service: other}}, "does not exist"},
	} {
		before := base.Clone()
		_, err := base.Do(tc.ops)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
		if len(base.Services) != len(before.Services) || len(base.Services[0].Reals) != 1 {
			t.Errorf("%s: the base configuration changed", tc.name)
		}
	}
}

func TestEditRealKeepsWeightWhenOmitted(t *testing.T) {
	c, _ := (&Config{}).Do([]Op{{Kind: OpAddService, Service: svc, Scheduler: "rr"}, {Kind: OpAddReal, Service: svc, Real: Real{Addr: rs1.Addr, Port: 80, Weight: 7, Forward: FullNAT}}})
	n, err := c.Do([]Op{{Kind: OpEditReal, Service: svc, Real: Real{Addr: rs1.Addr, Port: 80, Weight: -1, Forward: FullNAT}}})
	if err != nil {
		t.Fatal(err)
	}
	if n.Services[0].Reals[0].Weight != 7 {
		t.Fatalf("weight %d, want 7", n.Services[0].Reals[0].Weight)
	}
}

func TestServicesStaySorted(t *testing.T) {
	var ops []Op
	for _, a := range []string{"198.18.0.9", "198.18.0.1", "198.18.0.5"} {
		ops = append(ops, Op{Kind: OpAddService, Service: ServiceKey{Proto: TCP, Addr: netip.MustParseAddr(a), Port: 80}, Scheduler: "rr"})
	}
	c, err := (&Config{}).Do(ops)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(c.Services); i++ {
		if c.Services[i-1].Key.compare(c.Services[i].Key) >= 0 {
			t.Fatalf("services not sorted: %v", c.Services)
		}
	}
}

package xdp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/cli/ipvsadm"
	"github.com/mbx-net/mbx/lb"
)

// sameBucket returns n IPv6 lab addresses that share one local6 bucket.
func sameBucket(t *testing.T, n int) []netip.Addr {
	t.Helper()
	seen := map[uint32][]netip.Addr{}
	base := netip.MustParseAddr("fd00:198::").As16()
	for i := 1; i < 1<<20; i++ {
		a := base
		a[13], a[14], a[15] = byte(i>>16), byte(i>>8), byte(i)
		addr := netip.AddrFrom16(a)
		k := localKey(addr)
		b := local6Bucket(k.Addr, k.Family)
		seen[b] = append(seen[b], addr)
		if len(seen[b]) == n {
			return seen[b]
		}
	}
	t.Fatalf("no %d addresses in one bucket", n)
	return nil
}

func keysOf(addrs ...netip.Addr) map[mbxLocalKey]bool {
	m := map[mbxLocalKey]bool{}
	for _, a := range addrs {
		m[localKey(a)] = true
	}
	return m
}

func TestLocal6Plan(t *testing.T) {
	full := sameBucket(t, local6Ways+1)
	v4 := netip.MustParseAddr("198.18.1.200")
	tests := []struct {
		name    string
		placed  []netip.Addr // already in local6, in this order
		want    []netip.Addr
		adds    int
		removes int
		err     string
	}{
		{name: "a VIP and two LIPs of both families", want: []netip.Addr{full[0], v4, netip.MustParseAddr("fd00:198::b:200")}, adds: 3},
		{name: "placed ones stay", placed: full[:2], want: full[:3], adds: 1},
		{name: "a removed one frees its slot", placed: full[:2], want: full[1:2], removes: 1},
		{name: "a full bucket is refused", want: full, err: "hash alike"},
		{name: "a full bucket with placed ones is refused", placed: full[:local6Ways], want: full, err: "hash alike"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := newLocal6Table()
			for _, a := range tt.placed {
				p, err := tab.plan(keysOf(append(addrsOf(tab), a)...))
				if err != nil {
					t.Fatal(err)
				}
				for k, lid := range p.add {
					tab.lid[k], tab.addr[lid] = lid, k
				}
			}
			before := fmt.Sprint(tab.lid)
			p, err := tab.plan(keysOf(tt.want...))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(tab.lid) != before {
				t.Fatal("plan changed the table")
			}
			if len(p.add) != tt.adds || len(p.remove) != tt.removes {
				t.Fatalf("%d adds, %d removes; want %d, %d", len(p.add), len(p.remove), tt.adds, tt.removes)
			}
			used := map[uint16]bool{}
			for lid := range tab.addr {
				used[lid] = true
			}
			for k, lid := range p.add {
				base := local6Bucket(k.Addr, k.Family)
				if uint32(lid) < base || uint32(lid) >= base+local6Ways || lid == lidNone || used[lid] {
					t.Errorf("%s placed in slot %d (bucket %d, used %v)", wordsAddr(k.Addr, k.Family), lid, base, used[lid])
				}
				used[lid] = true
			}
		})
	}
}

func addrsOf(t local6Table) []netip.Addr {
	var out []netip.Addr
	for k := range t.lid {
		out = append(out, wordsAddr(k.Addr, k.Family))
	}
	return out
}

// A configuration whose IPv6 addresses overflow a local6 bucket is refused
// before anything is written; a full bucket works in every way (slot).
func TestLocal6Buckets(t *testing.T) {
	f, err := vectors.Find("fnat6")
	if err != nil {
		t.Fatal(err)
	}
	d := setupXDP(t, f, &lb.Config{}).(*testDatapath)
	if n := d.b.objs.Local6.MaxEntries(); n != local6Slots || local6Slots/local6Ways != 1<<14 {
		t.Fatalf("local6 has %d slots, Go's twin expects %d in 2^14 buckets", n, local6Slots)
	}
	vips := sameBucket(t, local6Ways+1)
	config := func(vips []netip.Addr) *lb.Config { return dr6Config(t, vips...) }
	apply := func(cfg *lb.Config) error { return d.w.Do(func() error { return d.b.Apply(cfg) }) }
	if err := apply(config(vips)); err == nil || !strings.Contains(err.Error(), "hash alike") {
		t.Fatalf("Apply: %v, want a full-bucket error", err)
	}
	if len(d.b.services) != 0 || len(d.b.local6.lid) != 0 {
		t.Fatalf("a refused Apply left %d services, %d local6 slots", len(d.b.services), len(d.b.local6.lid))
	}
	if err := apply(config(vips[:local6Ways])); err != nil {
		t.Fatal(err)
	}
	for i, vip := range vips {
		p := vectors.Packet{Iface: "wan0", Eth: map[string]any{"src": "client", "dst": "wan0"},
			IP:  map[string]any{"src": "fd00:198::a:2", "dst": vip.String()},
			TCP: map[string]any{"sport": 40000, "dport": 80, "flags": "S"}}
		want := "redirect"
		if i == local6Ways {
			want = "pass" // not a VIP
		}
		if v, _ := d.send(t, f, p); v != want {
			t.Errorf("SYN to %s (way %d): %s, want %s", vip, i, v, want)
		}
	}
}

// A removed address's slot is not given to another address while
// connection entries still name it: the new address would inherit them.
func TestLocal6RetiredSlot(t *testing.T) {
	f, err := vectors.Find("fnat6")
	if err != nil {
		t.Fatal(err)
	}
	d := setupXDP(t, f, &lb.Config{}).(*testDatapath)
	vips := sameBucket(t, local6Ways)
	config := func(vips ...netip.Addr) *lb.Config { return dr6Config(t, vips...) }
	apply := func(cfg *lb.Config) {
		t.Helper()
		if err := d.w.Do(func() error { return d.b.Apply(cfg) }); err != nil {
			t.Fatal(err)
		}
	}
	syn := func(vip netip.Addr) string {
		p := vectors.Packet{Iface: "wan0", Eth: map[string]any{"src": "client", "dst": "wan0"},
			IP:  map[string]any{"src": "fd00:198::a:2", "dst": vip.String()},
			TCP: map[string]any{"sport": 40000, "dport": 80, "flags": "S"}}
		v, _ := d.send(t, f, p)
		return v
	}
	// Three addresses fill three ways; the fourth way is free.
	apply(config(vips[0], vips[1], vips[2]))
	if v := syn(vips[0]); v != "redirect" {
		t.Fatalf("SYN: %s", v)
	}
	old := d.b.local6.lid[localKey(vips[0])]
	// vips[0] goes, then vips[3] comes: it takes the free way, not
	// vips[0]'s slot (lower, so first in the bucket, but retired).
	apply(config(vips[1], vips[2]))
	apply(config(vips[1], vips[2], vips[3]))
	if d.b.local6.lid[localKey(vips[3])] == old {
		t.Fatalf("slot %d given to %s while an entry names it", old, vips[3])
	}
	if v := syn(vips[0]); v != "pass" {
		t.Fatalf("SYN to the removed VIP: %s, want pass", v)
	}
	// Two sweeps: the unreachable entry is deleted, the slot freed.
	d.b.sweepRetired6()
	if len(d.b.local6.retired) != 1 {
		t.Fatalf("retired after one sweep: %v", d.b.local6.retired)
	}
	d.b.sweepRetired6()
	if len(d.b.local6.retired) != 0 {
		t.Fatalf("retired after two sweeps: %v", d.b.local6.retired)
	}
	var k mbxFlowKey6
	var c mbxConn6
	for it := d.b.objs.Conns6.Iterate(); it.Next(&k, &c); {
		if k.Lid == old {
			t.Fatalf("entry %+v still names the freed slot", k)
		}
	}
	// Now the slot can be placed again.
	apply(config(vips[1], vips[2], vips[3], vips[0]))
	if v := syn(vips[0]); v != "redirect" {
		t.Fatalf("SYN to the re-added VIP: %s", v)
	}
}

// dr6Config is a DR service on port 80 of each VIP, to fnat6's rs1.
func dr6Config(t *testing.T, vips ...netip.Addr) *lb.Config {
	t.Helper()
	var lines []string
	for _, a := range vips {
		lines = append(lines, fmt.Sprintf("-A -t [%s]:80 -s rr", a), fmt.Sprintf("-a -t [%s]:80 -r [fd00:198::b:2] -g", a))
	}
	ops, err := ipvsadm.ParseLines(strings.Join(lines, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := (&lb.Config{}).Do(ops)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

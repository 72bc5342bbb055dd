package xdp

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/vectors"
	"github.com/mbx-net/mbx/lab"
)

// An IPv6 connection table an older mbx pinned (40-byte keys) is carried
// over: the entries come back under the new keys, and the connection's
// reply still finds its way through.
func TestConns6Migration(t *testing.T) {
	requireRoot(t)
	f, err := vectors.Find("fnat6")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := f.ConfigModel()
	if err != nil {
		t.Fatal(err)
	}
	w, err := lab.NewWorker()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	dir := fmt.Sprintf("/sys/fs/bpf/mbx-test-migrate6-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(dir) })
	var idx map[string]int
	load := func(fresh bool) *Backend {
		t.Helper()
		var b *Backend
		err := w.Do(func() (err error) {
			if idx == nil {
				if idx, err = BuildTopology(f); err != nil {
					return err
				}
			}
			if b, err = Load(backend.Options{ConnMax: 4096, PinDir: dir, Fresh: fresh}); err != nil {
				return err
			}
			for _, i := range idx {
				if err := b.AddTxPort(i); err != nil {
					return err
				}
			}
			return b.Apply(cfg)
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	run := func(b *Backend, p vectors.Packet) string {
		t.Helper()
		frame, err := f.Build(p)
		if err != nil {
			t.Fatal(err)
		}
		var v string
		if err := w.Do(func() (err error) { v, _, err = TestRun(b.Program(), idx[p.Iface], frame); return err }); err != nil {
			t.Fatal(err)
		}
		return v
	}

	b := load(true)
	if v := run(b, f.Steps[0].In); v != "redirect" { // the client's SYN
		t.Fatalf("SYN: %s", v)
	}
	want := map[mbxFlowKey6]mbxConn6{}
	var k mbxFlowKey6
	var c mbxConn6
	it := b.objs.Conns6.Iterate()
	for it.Next(&k, &c) {
		want[k] = c
	}
	if len(want) != 2 {
		t.Fatalf("%d entries after a SYN, want 2", len(want))
	}
	// What an older mbx would have left: the same entries under 40-byte
	// keys, and no local6.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: flowKey6v1Size,
		ValueSize: b.objs.Conns6.ValueSize(), MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	var lport uint16
	for k, c := range want {
		dst := b.local6.addr[k.Lid]
		c.TwinLid = 0 // the old layout's padding
		ok := flowKey6v1{Saddr: k.Saddr, Daddr: dst.Addr, Sport: k.Sport, Dport: k.Dport, Proto: k.Proto, Family: k.Family}
		if err := old.Put(&ok, &c); err != nil {
			t.Fatal(err)
		}
		if c.Flags&1 != 0 { // the reply entry: RS -> LIP:lport
			lport = htons(k.Dport)
		}
	}
	if err := b.Handover(); err != nil { // a restart: the pinned state stays
		t.Fatal(err)
	}
	for _, name := range []string{"conns6", "local6"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.Pin(filepath.Join(dir, "conns6")); err != nil {
		t.Fatal(err)
	}

	b = load(false)
	defer b.Close()
	got := map[mbxFlowKey6]mbxConn6{}
	it = b.objs.Conns6.Iterate()
	for it.Next(&k, &c) {
		got[k] = c
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries carried over, want %d", len(got), len(want))
	}
	for k, c := range want {
		g, ok := got[k]
		if !ok {
			t.Fatalf("entry %+v not carried over (got %+v)", k, got)
		}
		if g.TwinLid != c.TwinLid || g.Saddr != c.Saddr || g.Daddr != c.Daddr || g.CsumL4 != c.CsumL4 {
			t.Errorf("entry %+v: got %+v, want %+v", k, g, c)
		}
	}
	conns, err := b.Conns(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 1 || conns[0].Client.String() != "[fd00:198::a:2]:40000" || conns[0].Virtual.String() != "[fd00:198::a:100]:80" ||
		conns[0].Local.Addr().String() != "fd00:198::b:200" {
		t.Errorf("listed after the migration: %+v", conns)
	}
	synAck := vectors.Packet{Iface: "lan0",
		Eth: map[string]any{"src": "rs1", "dst": "lan0"},
		IP:  map[string]any{"src": "fd00:198::b:2", "dst": "fd00:198::b:200"},
		TCP: map[string]any{"sport": 8080, "dport": int(lport), "flags": "SA", "seq": 5000, "ack": 101}}
	if v := run(b, synAck); v != "redirect" {
		t.Fatalf("the real server's SYN-ACK after the migration: %s, want redirect", v)
	}
}

package main

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mbx-net/mbx/backend/vectors"
)

// TestFloorRewrites runs the floor programs on the generator's frames
// (BPF_PROG_TEST_RUN, twice: the miss that inserts, then the hit) and
// checks what they send: redirected, addressed to the sink, checksums
// still valid. The benchmark's claims about the floor rest on it doing
// this work and no less.
func TestFloorRewrites(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF)")
	}
	conntrackTable, conntrack6Table, arraytrackTable = nil, nil, nil
	for _, c := range []struct {
		name       string
		v6, inline bool
	}{{"ipv4", false, false}, {"ipv6", true, false}, {"ipv4-inline-table", false, true}} {
		t.Run(c.name, func(t *testing.T) {
			frame, _, err := genFrame(c.v6)
			if err != nil {
				t.Fatal(err)
			}
			devmap := testDevmap(t)
			insns := conntrackProg(devmap, 1)
			if c.v6 {
				insns = conntrack6Prog(devmap, 1)
			}
			if c.inline {
				insns = arraytrackProg(devmap, 1)
			}
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: insns})
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			out := make([]byte, len(frame))
			for run := 0; run < 2; run++ {
				ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
				if err != nil {
					t.Fatal(err)
				}
				if ret != 4 {
					t.Fatalf("run %d: verdict %d, want XDP_REDIRECT", run, ret)
				}
			}
			table := conntrackTable
			if c.v6 {
				table = conntrack6Table
			}
			if c.inline {
				table = arraytrackTable
			}
			var n int
			var k, v []byte
			for it := table.Iterate(); it.Next(&k, &v); {
				if !c.inline || strings.Trim(string(v), "\x00") != "" { // an array's empty slots are zero
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%d table entries after two packets of one flow, want 1", n)
			}
			if got, want := net.HardwareAddr(out[0:6]).String(), sinkMAC; got != want {
				t.Errorf("destination MAC %s, want %s", got, want)
			}
			if !c.v6 {
				if got := net.IP(out[30:34]).String(); got != sinkIP {
					t.Errorf("destination %s, want %s", got, sinkIP)
				}
			} else if got := net.IP(out[38:54]).String(); got != sinkIP6 {
				t.Errorf("destination %s, want %s", got, sinkIP6)
			}
			if err := vectors.VerifyChecksums(out); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestStatelessRedirects: the stateless floor sends the generator's frame
// to the sink's MAC, and leaves the rest of the frame as it was.
func TestStatelessRedirects(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF)")
	}
	frame, _, err := genFrame(false)
	if err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: statelessProg(testDevmap(t), 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	out := make([]byte, len(frame))
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		t.Fatal(err)
	}
	if ret != 4 {
		t.Fatalf("verdict %d, want XDP_REDIRECT", ret)
	}
	if got, want := net.HardwareAddr(out[0:6]).String(), sinkMAC; got != want {
		t.Errorf("destination MAC %s, want %s", got, want)
	}
	if got, want := net.HardwareAddr(out[6:12]).String(), outMAC; got != want {
		t.Errorf("source MAC %s, want %s", got, want)
	}
	if string(out[12:]) != string(frame[12:]) {
		t.Error("the stateless floor changed the frame past the MACs")
	}
}

// testDevmap is a devmap with ifindex 1, the programs' output under
// BPF_PROG_TEST_RUN (nothing is sent).
func testDevmap(t *testing.T) *ebpf.Map {
	t.Helper()
	devmap, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.DevMapHash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { devmap.Close() })
	if err := devmap.Put(uint32(1), uint32(1)); err != nil {
		t.Fatal(err)
	}
	return devmap
}

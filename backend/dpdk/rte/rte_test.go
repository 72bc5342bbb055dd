//go:build dpdk

package rte

import (
	"bytes"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
)

// The EAL runs once per process: every test shares it. No hugepages, no
// PCI, no shared files (--no-shconf): two in-memory ports.
func TestMain(m *testing.M) {
	if os.Getuid() != 0 {
		fmt.Println("skipping: DPDK's EAL needs root")
		os.Exit(0)
	}
	err := Init([]string{"-l", "0", "--no-huge", "--no-pci", "-m", "256", "--no-shconf", "--no-telemetry", "--log-level", "lib.eal:error",
		"--vdev=net_ring0", "--vdev=net_null0"})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

func TestInitOnce(t *testing.T) {
	if err := Init(nil); err == nil {
		t.Fatal("a second EAL initialisation succeeded")
	}
}

func TestPorts(t *testing.T) {
	if n := Ports(); n != 2 {
		t.Fatalf("%d ports, want 2", n)
	}
	p, err := PortByName("net_ring0")
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != "net_ring0" {
		t.Errorf("port %d is named %q", p, p.Name())
	}
	if _, err := PortByName("net_af_xdp9"); err == nil {
		t.Error("a missing port was found")
	}
}

// net_ring's vdev sends what it transmits back to its own receive queue:
// the bytes Go wrote must come back unchanged, including a prepended
// header and a changed length.
func TestRingRoundTrip(t *testing.T) {
	p, mp := startPort(t, "net_ring0", 1023, 256)
	b := NewBurst(32)
	defer b.Close()
	if err := b.Alloc(mp, 8); err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for i := range 8 {
		frame := bytes.Repeat([]byte{byte(i + 1)}, 60+i)
		if err := b.SetLen(i, len(frame)); err != nil {
			t.Fatal(err)
		}
		copy(b.Data(i), frame)
		if i%2 == 1 { // an outer header, as the tunnel modes add
			if err := b.Prepend(i, 20); err != nil {
				t.Fatal(err)
			}
			copy(b.Data(i), bytes.Repeat([]byte{0xee}, 20))
			frame = append(bytes.Repeat([]byte{0xee}, 20), frame...)
		}
		if i == 6 {
			b.Keep(i, false) // dropped: freed, not sent
			continue
		}
		want = append(want, frame)
	}
	if sent := b.Tx(p, 0); sent != 7 {
		t.Fatalf("sent %d, want 7", sent)
	}
	n := b.Rx(p, 0)
	if n != 7 {
		t.Fatalf("received %d, want 7", n)
	}
	for i := range n {
		if !bytes.Equal(b.Data(i), want[i]) {
			t.Errorf("packet %d: got % x, want % x", i, b.Data(i), want[i])
		}
	}
	b.Free()
	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.OutPackets != 7 || st.InPackets != 7 {
		t.Errorf("stats %+v", st)
	}
	if got := mp.Available(); got != 1023 {
		t.Errorf("%d buffers back in the pool, want 1023 (a leak)", got)
	}
	if err := b.SetLen(0, 1<<16); err == nil {
		t.Error("SetLen past the buffer succeeded")
	}
	// Room and SetView: the same bytes, moved within the buffer.
	if err := b.Alloc(mp, 1); err != nil {
		t.Fatal(err)
	}
	b.SetLen(0, 4)
	copy(b.Data(0), "abcd")
	room, off := b.Room(0)
	if string(room[off:off+4]) != "abcd" || off == 0 {
		t.Errorf("room offset %d: % x", off, room[off:off+4])
	}
	copy(room[off-2:], "xy")
	if err := b.SetView(0, off-2, 6); err != nil || string(b.Data(0)) != "xyabcd" {
		t.Errorf("SetView: %v %q", err, b.Data(0))
	}
	if err := b.SetView(0, 0, len(room)+1); err == nil {
		t.Error("SetView past the buffer succeeded")
	}
	b.Free()
}

// net_null receives as many packets as asked and swallows what it sends.
func TestNullPort(t *testing.T) {
	p, _ := startPort(t, "net_null0", 4095, 512)
	b := NewBurst(32)
	defer b.Close()
	total := 0
	for range 100 {
		n := b.Rx(p, 0)
		total += n
		if n > 0 && len(b.Data(0)) == 0 {
			t.Fatal("an empty packet from net_null")
		}
		b.Tx(p, 0)
	}
	if total != 3200 {
		t.Errorf("received %d packets in 100 bursts of 32", total)
	}
}

func BenchmarkNullBurst(b *testing.B) {
	p, _ := startPort(b, "net_null0", 4095, 512)
	bu := NewBurst(32)
	defer bu.Close()
	pkts := 0
	for b.Loop() {
		n := bu.Rx(p, 0)
		for i := range n {
			d := bu.Data(i)
			d[0] ^= 1
		}
		pkts += n
		bu.Tx(p, 0)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(pkts), "ns/pkt")
}

// startPort starts one queue pair on the named port with a pool of n
// buffers (a pool name of its own), stopped when the test ends.
func startPort(tb testing.TB, name string, n, ndesc int) (Port, *Mempool) {
	tb.Helper()
	mp, err := NewMempool(fmt.Sprintf("p%d", poolSeq.Add(1)), n)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := PortByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.Setup(1, 1, ndesc, mp); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Stop)
	return p, mp
}

var poolSeq atomic.Int32

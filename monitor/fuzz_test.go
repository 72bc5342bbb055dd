package monitor

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzDecode: any bytes under any link type decode or fail cleanly.
func FuzzDecode(f *testing.F) {
	f.Add(uint16(LinkEthernet), c2s(1, 2, syn, "x"))
	f.Add(uint16(LinkRaw), c2s(1, 2, syn, "x")[14:])
	f.Add(uint16(LinkLinuxSLL), append(make([]byte, 2), c2s(1, 2, syn, "x")...))
	f.Fuzz(func(t *testing.T, lt uint16, frame []byte) {
		var p Packet
		if err := Decode(LinkType(lt), frame, &p); err == nil && p.TCP && len(p.Payload) > len(frame) {
			t.Fatal("payload beyond the frame")
		}
	})
}

// FuzzTracker: a capture-like sequence of arbitrary frames (split on a
// marker) never panics, and a corpus capture with bytes flipped neither.
func FuzzTracker(f *testing.F) {
	f.Add(bytes.Join([][]byte{c2s(100, 0, syn, ""), s2c(500, 101, synack, ""), c2s(101, 501, psh, "GET"), c2s(99, 0, finack, "zz")}, []byte("|||")))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := New(Options{BufferSize: 64, StreamHash: true})
		m.DefineEvent(EvNewData, func(c *Conn, side Side) bool { b, _ := c.Peek(side); _ = c.Holes(side); return len(b) > 0 })
		m.Trace(func(Event, Hook, *Conn, Side) {})
		at := time.Unix(1, 0)
		for i, fr := range bytes.Split(data, []byte("|||")) {
			m.Process(LinkEthernet, fr, at.Add(time.Duration(i)*time.Second))
		}
		m.Close()
	})
}

// Corrupt and truncated corpus captures: a clear error or counted orphans.
func TestCorruptCaptures(t *testing.T) {
	paths, _ := filepath.Glob("../../shared/corpus/cases/*/*.pcap")
	if len(paths) == 0 {
		t.Skip("no corpus")
	}
	for _, p := range paths[:min(len(paths), 8)] {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, cut := range []int{3, 30, len(b) / 2, len(b) - 1} {
			if err := Read(bytes.NewReader(b[:cut]), New(Options{})); err == nil && cut < 24 {
				t.Errorf("%s cut at %d: no error", p, cut)
			}
		}
		flipped := append([]byte(nil), b...)
		for i := 40; i < len(flipped); i += 7 {
			flipped[i] ^= 0x5a
		}
		_ = Read(bytes.NewReader(flipped), New(Options{})) // must not panic
	}
}

package flow

import (
	"net/netip"
	"testing"
)

func TestFSMConnectionLife(t *testing.T) {
	f := IPVSFSM()
	steps := []struct {
		dir   Direction
		flags uint8
		want  State
	}{
		{DirInput, FlagSYN, StateSynRecv},
		{DirOutput, FlagSYN | FlagACK, StateSynRecv},
		{DirInput, FlagACK, StateEstablished},
		{DirInput, FlagACK | FlagFIN, StateCloseWait},
		{DirOutput, FlagACK | FlagFIN, StateTimeWait},
		{DirInput, FlagACK, StateTimeWait},
	}
	s := StateNone
	for i, st := range steps {
		s = f.Next(st.dir, st.flags, s)
		if s != st.want {
			t.Fatalf("step %d: %v, want %v", i, s, st.want)
		}
	}
	if got := f.Next(DirOutput, FlagRST, StateEstablished); got != StateClose {
		t.Fatalf("RST from the server: %v", got)
	}
	if got := f.Next(DirInput, 0, StateEstablished); got != StateEstablished {
		t.Fatalf("no flags changes nothing: %v", got)
	}
}

func TestEventPriority(t *testing.T) {
	for flags, want := range map[uint8]Event{
		FlagSYN | FlagRST: EventRST, FlagSYN | FlagFIN: EventSYN, FlagFIN | FlagACK: EventFIN, FlagACK: EventACK, 0: EventNone,
	} {
		if got := EventOf(flags); got != want {
			t.Errorf("flags %#x: %v, want %v", flags, got, want)
		}
	}
}

func TestHashIsStableAndSpreads(t *testing.T) {
	k := Key{Src: netip.MustParseAddr("198.18.0.2"), Dst: netip.MustParseAddr("198.18.0.100"), SrcPort: 40000, DstPort: 80, Proto: 6}
	if k.Hash(0) != k.Hash(0) || k.Hash(0) == k.Hash(1) {
		t.Fatal("hash must be deterministic and depend on the seed")
	}
	seen := map[uint16]bool{}
	for p := uint16(1); p <= 1000; p++ {
		k.SrcPort = p
		_, port := LocalCandidate(k.Hash(0), 0, 1, 1024, 65535)
		seen[port] = true
	}
	if len(seen) < 990 {
		t.Fatalf("1000 flows got only %d distinct local ports", len(seen))
	}
}

package flow

import (
	"encoding/hex"
	"strings"
	"testing"
)

// A TCP SYN 198.18.0.2:40000 -> 198.18.0.100:80 and variants of it broken
// the way testdata/vectors/malformed.yaml breaks them.
const synHex = "020000000001020000000102 0800" +
	"4500002800014000400600000000000000000000" + // IPv4, addresses patched below
	"9c400050000003e8000000005002ffff00000000"

func frame(t testing.TB, patch func(b []byte)) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(synHex, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	copy(b[26:30], []byte{198, 18, 0, 2})
	copy(b[30:34], []byte{198, 18, 0, 100})
	if patch != nil {
		patch(b)
	}
	return b
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		patch func(b []byte)
		cut   int
		want  ParseResult
	}{
		{"syn", nil, 0, ParseOK},
		{"arp", func(b []byte) { b[12], b[13] = 0x08, 0x06 }, 0, ParseNotIP},
		{"runt", nil, 10, ParseNotIP},
		{"ip cut", nil, 26, ParseBadL3},
		{"ihl 4", func(b []byte) { b[14] = 0x44 }, 0, ParseBadL3},
		{"version 6", func(b []byte) { b[14] = 0x65 }, 0, ParseBadL3},
		{"tot beyond frame", func(b []byte) { b[16], b[17] = 0x0f, 0xff }, 0, ParseBadL3},
		{"tot below header", func(b []byte) { b[16], b[17] = 0, 16 }, 0, ParseBadL3},
		{"icmp", func(b []byte) { b[23] = 1 }, 0, ParseOtherL4},
		{"first fragment", func(b []byte) { b[20] = 0x20 }, 0, ParseOK},
		{"later fragment", func(b []byte) { b[20], b[21] = 0, 185 }, 0, ParseFragment},
		{"tcp cut", func(b []byte) { b[16], b[17] = 0, 30 }, 44, ParseBadL4},
		{"doff 4", func(b []byte) { b[46] = 0x40 }, 0, ParseBadL4},
		{"doff beyond", func(b []byte) { b[46] = 0xf0 }, 0, ParseBadL4},
	} {
		b := frame(t, tc.patch)
		if tc.cut > 0 {
			b = b[:tc.cut]
		}
		p, r := Parse(b)
		if r != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, r, tc.want)
		}
		if r == ParseOK && (p.Key.SrcPort != 40000 || p.Key.DstPort != 80 || p.TCPFlags != FlagSYN || p.Key.Dst.String() != "198.18.0.100") {
			t.Errorf("%s: parsed %+v", tc.name, p)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(frame(f, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, r := Parse(b) // must never panic
		if r == ParseOK && (p.L4Off+8 > len(b) || p.IPLen+ethLen > len(b)) {
			t.Fatalf("ok with offsets beyond the frame: %+v len %d", p, len(b))
		}
	})
}

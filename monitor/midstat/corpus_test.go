package midstat

import (
	"bufio"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/mbx-net/mbx/monitor"
)

const corpus = "../../../shared/corpus"

// captureOf returns a case's capture file.
func captureOf(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".pcap") || strings.HasSuffix(n, ".pcapng") {
			return filepath.Join(dir, n)
		}
	}
	t.Fatalf("no capture in %s", dir)
	return ""
}

// tsv reads a tab-separated file with a header into maps.
func tsv(t *testing.T, path string) []map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var head []string
	var out []map[string]string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "\t")
		if head == nil {
			head = cols
			continue
		}
		row := map[string]string{}
		for i, h := range head {
			if i < len(cols) {
				row[h] = cols[i]
			}
		}
		out = append(out, row)
	}
	return out
}

func cases(t *testing.T) []string {
	dirs, _ := filepath.Glob(filepath.Join(corpus, "cases", "*"))
	if len(dirs) == 0 {
		t.Skipf("no corpus at %s", corpus)
	}
	sort.Strings(dirs)
	return dirs
}

func run(t *testing.T, path string, opts monitor.Options) []Row {
	t.Helper()
	m := monitor.New(opts)
	tab := New(m, true, true)
	if err := monitor.ReadFile(path, m); err != nil {
		t.Fatal(err)
	}
	return tab.Rows()
}

// TestCorpusFollow: per connection, the reassembled bytes and their
// SHA-256 in each direction equal tshark's follow output, with tshark's
// flow key (addresses and ports, no VLAN).
func TestCorpusFollow(t *testing.T) {
	for _, dir := range cases(t) {
		want := filepath.Join(dir, "expected", "tshark-follow-summary.tsv")
		if _, err := os.Stat(want); err != nil {
			continue
		}
		t.Run(filepath.Base(dir), func(t *testing.T) {
			rows := run(t, captureOf(t, dir), monitor.Options{IgnoreVLAN: true, StreamHash: true})
			var streams []map[string]string
			for _, s := range tsv(t, want) {
				if s["node0"] != ":0" { // tshark's follow of a stream index past the last
					streams = append(streams, s)
				}
			}
			if len(rows) != len(streams) {
				t.Errorf("%d connections, tshark has %d streams", len(rows), len(streams))
			}
			used := map[int]bool{}
			for _, s := range streams {
				n0, n1 := s["node0"], s["node1"]
				found := false
				for i, r := range rows {
					if used[i] {
						continue
					}
					var fwd, rev int // direction 0->1 is the row's fwd side
					switch {
					case r.Client == n0 && r.Server == n1:
						fwd, rev = 0, 1
					case r.Client == n1 && r.Server == n0:
						fwd, rev = 1, 0
					default:
						continue
					}
					used[i], found = true, true
					b01, _ := strconv.ParseUint(s["bytes_node0_to_node1"], 10, 64)
					b10, _ := strconv.ParseUint(s["bytes_node1_to_node0"], 10, 64)
					if r.StreamBytes[fwd] != b01 || r.StreamBytes[rev] != b10 {
						t.Errorf("stream %s %s<->%s: bytes %d/%d, tshark %d/%d", s["tcp.stream"], n0, n1, r.StreamBytes[fwd], r.StreamBytes[rev], b01, b10)
					} else if r.StreamSHA256[fwd] != s["sha256_0to1"] || r.StreamSHA256[rev] != s["sha256_1to0"] {
						t.Errorf("stream %s %s<->%s: sha256 differs from tshark's", s["tcp.stream"], n0, n1)
					}
					break
				}
				if !found {
					t.Errorf("stream %s %s<->%s: no such connection", s["tcp.stream"], n0, n1)
				}
			}
		})
	}
}

// notConversations are tshark streams that are not TCP at this vantage
// point (docs/monitor.md, "Differences from tshark").
var notConversations = map[string]string{
	"p05-tcp-reassembly-example/1": "a TCP header sampled inside an sFlow datagram (UDP), which tshark dissects",
}

// TestCorpusConversations: the connections and their packets per
// direction equal tshark's TCP conversations (tcp.stream summary).
func TestCorpusConversations(t *testing.T) {
	for _, dir := range cases(t) {
		want := filepath.Join(dir, "expected", "tshark-tcp-stream-summary.tsv")
		if _, err := os.Stat(want); err != nil {
			continue
		}
		t.Run(filepath.Base(dir), func(t *testing.T) {
			rows := run(t, captureOf(t, dir), monitor.Options{IgnoreVLAN: true})
			var streams []map[string]string
			for _, s := range tsv(t, want) {
				if _, skip := notConversations[filepath.Base(dir)+"/"+s["tcp.stream"]]; !skip {
					streams = append(streams, s)
				}
			}
			if len(rows) != len(streams) {
				t.Errorf("%d connections, tshark has %d conversations", len(rows), len(streams))
			}
			ep := func(s string) string { // "ip|port" -> "ip:port" / "[v6]:port"
				i := strings.LastIndex(s, "|")
				if strings.Contains(s[:i], ":") {
					return "[" + s[:i] + "]:" + s[i+1:]
				}
				return s[:i] + ":" + s[i+1:]
			}
			used := map[int]bool{}
			for _, s := range streams {
				a, b := ep(s["endpoint_a"]), ep(s["endpoint_b"])
				pa, _ := strconv.ParseUint(s["packets_a2b"], 10, 64)
				pb, _ := strconv.ParseUint(s["packets_b2a"], 10, 64)
				found := false
				for i, r := range rows {
					if used[i] {
						continue
					}
					var got [2]uint64
					switch {
					case r.Client == a && r.Server == b:
						got = r.Packets
					case r.Client == b && r.Server == a:
						got = [2]uint64{r.Packets[1], r.Packets[0]}
					default:
						continue
					}
					used[i], found = true, true
					if got != [2]uint64{pa, pb} {
						t.Errorf("stream %s %s<->%s: packets %v, tshark %d/%d", s["tcp.stream"], a, b, got, pa, pb)
					}
					break
				}
				if !found {
					t.Errorf("stream %s %s<->%s: no such connection", s["tcp.stream"], a, b)
				}
			}
		})
	}
}

// zeekState is Zeek's conn_state for a connection, from the flags each
// side sent and how it ended (the mapping docs/monitor.md documents).
func zeekState(c *monitor.Conn) string {
	o, r := c.Sides[monitor.Client].Flags, c.Sides[monitor.Server].Flags
	has := func(f, bit uint8) bool { return f&bit != 0 }
	respSynAck := has(r, monitor.FlagSYN)
	// A SYN-ACK the client acknowledged stands in for a missed SYN.
	origSyn := has(o, monitor.FlagSYN) && !c.Midstream || respSynAck && has(o, monitor.FlagACK)
	switch {
	case origSyn && respSynAck:
		switch {
		case has(o, monitor.FlagRST):
			return "RSTO"
		case has(r, monitor.FlagRST):
			return "RSTR"
		case has(o, monitor.FlagFIN) && has(r, monitor.FlagFIN):
			return "SF"
		case has(o, monitor.FlagFIN):
			return "S2"
		case has(r, monitor.FlagFIN):
			return "S3"
		}
		return "S1"
	case origSyn:
		switch {
		case has(r, monitor.FlagRST):
			return "REJ"
		case has(o, monitor.FlagRST):
			return "RSTOS0"
		case has(o, monitor.FlagFIN):
			return "SH"
		case c.Sides[monitor.Server].Packets == 0:
			return "S0"
		}
	case respSynAck && !has(o, monitor.FlagSYN):
		switch {
		case has(r, monitor.FlagRST):
			return "RSTRH"
		case has(r, monitor.FlagFIN):
			return "SHR"
		}
	}
	return "OTH"
}

// zeekBaseline is one connection of a Zeek baseline.
type zeekBaseline struct {
	orig, resp string // "ip:port"; empty: the capture's only connection
	state      string
}

// zeekConns reads the conn_state of every connection of a case's Zeek
// baseline (conn.log, or the RST-behaviour test's "history, conn_state").
func zeekConns(t *testing.T, dir string) []zeekBaseline {
	base := filepath.Base(dir)
	if b, err := os.ReadFile(filepath.Join(dir, "upstream", "zeek-history-conn_state.out")); err == nil {
		line := map[string]int{"z05-single-rst": 0, "z06-syn-then-rst": 1, "z07-syn-then-ack-then-rst": 2}[base]
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		_, state, _ := strings.Cut(lines[line], ", ")
		return []zeekBaseline{{state: state}}
	}
	b, err := os.ReadFile(filepath.Join(dir, "upstream", "zeek-conn.log"))
	if err != nil {
		return nil
	}
	var fields []string
	var out []zeekBaseline
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "#fields") {
			fields = strings.Split(l, "\t")[1:]
			continue
		}
		if l == "" || strings.HasPrefix(l, "#") || fields == nil {
			continue
		}
		col := map[string]string{}
		for i, v := range strings.Split(l, "\t") {
			if i < len(fields) {
				col[fields[i]] = v
			}
		}
		if col["proto"] != "tcp" {
			continue
		}
		hp := func(h, p string) string {
			if strings.Contains(h, ":") {
				return "[" + h + "]:" + p
			}
			return h + ":" + p
		}
		out = append(out, zeekBaseline{hp(col["id.orig_h"], col["id.orig_p"]), hp(col["id.resp_h"], col["id.resp_p"]), col["conn_state"]})
	}
	return out
}

// TestCorpusZeek: where Zeek's baseline exists, its conn_state (derived
// from mbx's tracking by zeekState) and its orig/resp roles agree.
func TestCorpusZeek(t *testing.T) {
	for _, dir := range cases(t) {
		want := zeekConns(t, dir)
		if want == nil {
			continue
		}
		t.Run(filepath.Base(dir), func(t *testing.T) {
			m := monitor.New(monitor.Options{})
			var conns []*monitor.Conn
			m.On(monitor.EvConnStart, monitor.HookSend, func(c *monitor.Conn, _ monitor.Side, _ monitor.Event) { conns = append(conns, c) })
			if err := monitor.ReadFile(captureOf(t, dir), m); err != nil {
				t.Fatal(err)
			}
			if len(conns) != len(want) {
				t.Errorf("%d connections, Zeek has %d", len(conns), len(want))
			}
			for _, z := range want {
				found := false
				for _, c := range conns {
					if z.orig != "" && (c.Client.String() != z.orig || c.Server.String() != z.resp) {
						continue
					}
					found = true
					if got := zeekState(c); got != z.state {
						t.Errorf("%s -> %s: conn_state %s, Zeek %s", c.Client, c.Server, got, z.state)
					}
				}
				if !found {
					t.Errorf("Zeek's %s -> %s (%s): no connection with these roles", z.orig, z.resp, z.state)
				}
			}
		})
	}
}

// TestCorpusVLANKey: by default VLAN tags are part of the flow key, so z14's
// one 5-tuple on three VLANs is three connections of 7/7 packets, as in
// Zeek's VLAN-aware baseline (tshark, keyed on the 5-tuple, sees one).
func TestCorpusVLANKey(t *testing.T) {
	dir := filepath.Join(corpus, "cases", "z14-vlan-collisions")
	if _, err := os.Stat(dir); err != nil {
		t.Skip("no z14 in the corpus")
	}
	rows := run(t, captureOf(t, dir), monitor.Options{})
	got := map[string][2]uint64{}
	for _, r := range rows {
		got[fmt.Sprint(r.VLAN)] = r.Packets
	}
	want := map[string][2]uint64{"[]": {7, 7}, "[10 20]": {7, 7}, "[42]": {7, 7}}
	if !maps.Equal(got, want) {
		t.Errorf("connections by VLAN %v, Zeek %v", got, want)
	}
}

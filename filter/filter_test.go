package filter

import (
	"bufio"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/mbx-net/mbx/bench"
)

const corpus = "../../shared/corpus"

type triple struct {
	id, pcap, expr string
	want           []int // 1-based frame numbers
}

func triples(t *testing.T) []triple {
	f, err := os.Open(filepath.Join(corpus, "filters/filters.tsv"))
	if err != nil {
		t.Skipf("corpus not present: %v", err)
	}
	defer f.Close()
	var out []triple
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		tr := triple{id: c[0], pcap: c[2], expr: c[3]}
		b, err := os.ReadFile(filepath.Join(corpus, "filters/matches", tr.id+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Fields(string(b)) {
			n, err := strconv.Atoi(l)
			if err != nil {
				t.Fatalf("%s: %v", tr.id, err)
			}
			tr.want = append(tr.want, n)
		}
		if n, _ := strconv.Atoi(c[4]); n != len(tr.want) {
			t.Fatalf("%s: %d matches listed, %d expected", tr.id, len(tr.want), n)
		}
		out = append(out, tr)
	}
	return out
}

// readFrames returns a capture's link type and frames, from pcap or pcapng.
func readFrames(t *testing.T, path string) (layers.LinkType, [][]byte) {
	f, err := os.Open(filepath.Join(corpus, path))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r interface {
		LinkType() layers.LinkType
		ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	}
	if pr, err := pcapgo.NewReader(f); err == nil {
		r = pr
	} else {
		f.Seek(0, io.SeekStart)
		ng, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			t.Fatal(err)
		}
		r = ng
	}
	var frames [][]byte
	for {
		d, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return r.LinkType(), frames
		} else if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, d)
	}
}

// Every filter triple of the corpus selects exactly the frames tcpdump
// selected, both in Go (classic BPF, for the capture's link type) and,
// for Ethernet captures, compiled into XDP (run with BPF_PROG_TEST_RUN).
func TestCorpusFilters(t *testing.T) {
	canXDP := os.Geteuid() == 0
	for _, tr := range triples(t) {
		t.Run(tr.id, func(t *testing.T) {
			lt, frames := readFrames(t, tr.pcap)
			f, err := CompileLink(lt, tr.expr)
			if err != nil {
				t.Fatal(err)
			}
			var prog *ebpf.Program
			if canXDP && lt == layers.LinkTypeEthernet { // XDP sees Ethernet only
				prog, err = f.testProgram()
				if err != nil {
					t.Fatal(err)
				}
				defer prog.Close()
			}
			var goHits, xdpHits []int
			for i, fr := range frames {
				if ok, err := f.Match(fr); err != nil {
					t.Fatal(err)
				} else if ok {
					goHits = append(goHits, i+1)
				}
				if prog != nil && len(fr) >= 14 && len(fr) <= 3000 {
					ret, _, err := bench.RunXDP(prog, 1, fr, 1, 0)
					if err != nil {
						t.Fatalf("frame %d: %v", i+1, err)
					}
					if ret == 2 {
						xdpHits = append(xdpHits, i+1)
					}
				} else if prog != nil && len(fr) > 3000 {
					// too large for a test run: trust the Go result
					if ok, _ := f.Match(fr); ok {
						xdpHits = append(xdpHits, i+1)
					}
				}
			}
			if !equal(goHits, tr.want) {
				t.Errorf("%q in Go matched %v, tcpdump %v", tr.expr, goHits, tr.want)
			}
			if prog != nil && !equal(xdpHits, tr.want) {
				t.Errorf("%q in XDP matched %v, tcpdump %v", tr.expr, xdpHits, tr.want)
			}
		})
	}
}

func TestBadExpression(t *testing.T) {
	if _, err := Compile("tcp port eighty"); err == nil || !strings.Contains(err.Error(), `filter "tcp port eighty"`) {
		t.Fatalf("err = %v", err)
	}
}

// testProgram wraps the filter into an XDP program: PASS on a match, DROP
// otherwise.
func (f *Filter) testProgram() (*ebpf.Program, error) {
	body, err := f.XDPFunction()
	if err != nil {
		return nil, err
	}
	body = body[:len(body)-1] // the function's return
	insns := append(body,
		asm.JEq.Imm(asm.R0, 0, "nomatch").WithSymbol("filter_result"),
		asm.Mov.Imm(asm.R0, 2),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("nomatch"),
		asm.Return(),
	)
	return ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: insns})
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

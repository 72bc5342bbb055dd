package cli

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mbx-net/mbx/monitor"
)

const corpus = "../../shared/corpus"

// The stream filter offline (`mbx stat --pcap --filter`, `mbx monitor`)
// sees each packet as the monitor decoded it, on any link type: over every
// filter triple of the corpus it selects as many packets as tcpdump.
func TestOfflineFilterTriples(t *testing.T) {
	f, err := os.Open(filepath.Join(corpus, "filters/filters.tsv"))
	if err != nil {
		t.Skipf("corpus not present: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	n := 0
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		id, pcap, expr := c[0], c[2], c[3]
		want, err := strconv.Atoi(c[4])
		if err != nil {
			t.Fatalf("%s: count %q", id, c[4])
		}
		n++
		t.Run(id, func(t *testing.T) {
			match, err := pcapFilter(expr)
			if err != nil {
				t.Fatal(err)
			}
			r, err := os.Open(filepath.Join(corpus, pcap))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got := 0
			var p monitor.Packet
			err = monitor.ReadFrames(r, func(lt monitor.LinkType, frame []byte, _ time.Time, _ int) {
				_ = monitor.Decode(lt, frame, &p)
				if match(&p) {
					got++
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%q on %s: %d packets, tcpdump %d", expr, pcap, got, want)
			}
		})
	}
	if n == 0 {
		t.Fatal("no filter triples")
	}
}

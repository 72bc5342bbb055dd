package bench

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/mbx-net/mbx/monitor"
	"github.com/mbx-net/mbx/monitor/midstat"
)

// offlineCopies is how many times the corpus download (z21: 1556 frames,
// 1.5 MB, loss, retransmissions, zero windows) is repeated, each copy on
// its own client ports: ~50k frames, enough that tshark's start-up is a
// small part of its time.
const offlineCopies = 32

// bigCapture writes the repeated capture and returns its path, frames and
// bytes.
func bigCapture(b *testing.B) (string, int, int64) {
	src := "../../shared/corpus/cases/z21-206-example-b/206_example_b.pcap"
	f, err := os.Open(src)
	if err != nil {
		b.Skipf("no corpus: %v", err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		b.Fatal(err)
	}
	type frame struct {
		ci   gopacket.CaptureInfo
		data []byte
	}
	var frames []frame
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		frames = append(frames, frame{ci, data})
	}
	path := filepath.Join(b.TempDir(), "offline.pcap")
	out, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	w := pcapgo.NewWriter(out)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		b.Fatal(err)
	}
	var n int
	var size int64
	span := frames[len(frames)-1].ci.Timestamp.Sub(frames[0].ci.Timestamp) + time.Second
	for k := range offlineCopies {
		for _, fr := range frames {
			d := append([]byte(nil), fr.data...)
			// Ethernet/IPv4/TCP: move the non-80 port by k, so every copy
			// is its own set of connections.
			if len(d) >= 38 && binary.BigEndian.Uint16(d[12:]) == 0x0800 && d[23] == 6 {
				l4 := 14 + int(d[14]&0xf)*4
				for _, off := range []int{l4, l4 + 2} {
					if p := binary.BigEndian.Uint16(d[off:]); p != 80 {
						binary.BigEndian.PutUint16(d[off:], p+uint16(k))
					}
				}
			}
			ci := fr.ci
			ci.Timestamp = ci.Timestamp.Add(time.Duration(k) * span)
			if err := w.WritePacket(ci, d); err != nil {
				b.Fatal(err)
			}
			n++
			size += int64(len(d))
		}
	}
	return path, n, size
}

// BenchmarkOffline: `mbx stat --pcap` (the monitor and the midstat table,
// in process) against `tshark -n -q -z conv,tcp` on the same file in the
// same run; both must find the same number of TCP conversations. Target
// (issue 5): at least 20x faster than tshark.
func BenchmarkOffline(b *testing.B) {
	if _, err := exec.LookPath("tshark"); err != nil {
		b.Skip("no tshark (scripts/setup.sh installs it)")
	}
	path, frames, size := bigCapture(b)
	start := time.Now()
	out, err := exec.Command("tshark", "-n", "-r", path, "-q", "-z", "conv,tcp").Output()
	if err != nil {
		b.Fatal(err)
	}
	tsharkTime := time.Since(start)
	tsharkConvs := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "<->") {
			tsharkConvs++
		}
	}
	var rows int
	b.ResetTimer()
	for range b.N {
		m := monitor.New(monitor.Options{IgnoreVLAN: true, NoBuffer: true}) // as mbx stat
		tab := midstat.New(m, true, false)
		if err := monitor.ReadFile(path, m); err != nil {
			b.Fatal(err)
		}
		rows = len(tab.Rows())
		var buf bytes.Buffer
		_ = midstat.WriteJSON(&buf, tab.Rows())
	}
	per := b.Elapsed() / time.Duration(b.N)
	if rows != tsharkConvs {
		b.Errorf("%d connections, tshark %d conversations", rows, tsharkConvs)
	}
	b.ReportMetric(float64(frames)/per.Seconds(), "pkts/s")
	b.ReportMetric(float64(size)*8/per.Seconds()/1e9, "Gbps")
	b.ReportMetric(float64(frames)/tsharkTime.Seconds(), "tshark-pkts/s")
	b.ReportMetric(tsharkTime.Seconds()/per.Seconds(), "x-tshark")
}

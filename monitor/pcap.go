package monitor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/pcapgo"
)

// packetSource is what pcapgo's pcap and pcapng readers share.
type packetSource interface {
	ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// ReadFile runs every packet of a pcap or pcapng capture through m, then
// ends the connections still open (Close). A capture cut short mid-packet
// is an error naming the packet; the packets before it were processed.
func ReadFile(path string, m *Monitor) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return Read(f, m)
}

// Read is ReadFile on a stream.
func Read(r io.Reader, m *Monitor) error {
	err := ReadFrames(r, func(lt LinkType, frame []byte, t time.Time, _ int) { m.Process(lt, frame, t) })
	m.Close()
	return err
}

// ReadFrames calls fn for every packet of a pcap or pcapng stream; frame is
// valid only during the call, wire is the packet's length on the wire
// (more than len(frame) when the capture cut it). A capture cut short mid-packet is an error
// naming the packet.
func ReadFrames(r io.Reader, fn func(lt LinkType, frame []byte, t time.Time, wire int)) error {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, err := br.Peek(4)
	if err != nil {
		return fmt.Errorf("not a capture file: %w", noEOF(err))
	}
	var src packetSource
	var lt LinkType
	if string(magic) == "\x0a\x0d\x0d\x0a" {
		ng, err := pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{})
		if err != nil {
			return fmt.Errorf("pcapng: %w", err)
		}
		src, lt = ng, LinkType(ng.LinkType())
	} else {
		pr, err := pcapgo.NewReader(br)
		if err != nil {
			return fmt.Errorf("not a pcap or pcapng file: %w", err)
		}
		src, lt = pr, LinkType(pr.LinkType())
	}
	if !Supported(lt) {
		return fmt.Errorf("link type %d is not supported (Ethernet, Linux SLL/SLL2, raw IP, BSD loopback are)", lt)
	}
	for n := 1; ; n++ {
		data, ci, err := src.ZeroCopyReadPacketData()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("packet %d: %w", n, noEOF(err))
		}
		fn(lt, data, ci.Timestamp, ci.Length)
	}
}

func noEOF(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return errors.New("truncated capture")
	}
	return err
}

// Supported reports whether Decode reads link type lt.
func Supported(lt LinkType) bool {
	switch lt {
	case LinkEthernet, LinkRaw, LinkRawAlt, LinkIPv4, LinkIPv6, LinkLinuxSLL, LinkSLL2, LinkLoop:
		return true
	}
	return false
}

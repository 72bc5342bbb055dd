// Package capture records packets inside the running XDP datapath, before
// (entry) and after (exit) mbx translated them, with the verdict: the
// equivalent of DPVS's pdump. It finds mbx's program on the interface,
// loads an instance of it whose capture-filter function is the compiled
// tcpdump expression (sharing every map, so no state moves), swaps that into
// the interface's XDP link, turns capture on in the control map and reads
// records from the perf buffer. Close swaps the original program back. If
// the process dies first, capture is left on at most until its count or the
// next mbx restart, bounded by its rate; records then go nowhere.
package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/perf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/backend/xdp"
	"github.com/mbx-net/mbx/filter"
)

// Points at which packets are recorded (bpf/capture.h).
const (
	Entry uint32 = 1
	Exit  uint32 = 2
	Both         = Entry | Exit
)

// MaxSnaplen is the most bytes of a packet a record carries.
const MaxSnaplen = 4096

// Options say what to record.
type Options struct {
	Iface   string
	Points  uint32
	Filter  *filter.Filter
	Snaplen int    // bytes per record, at most MaxSnaplen
	Rate    int    // records per second and CPU at most
	Count   uint64 // records in all; 0 = no bound
	Force   bool   // take over from a capture left running (killed)
	// MonitorFilter is the stream filter of the monitor running in the
	// datapath (the daemon's --monitor-filter): the capturing copy keeps
	// it. nil: none runs.
	MonitorFilter *filter.Filter
}

// Record is one recorded packet.
type Record struct {
	Time    time.Time
	Ifindex int
	Point   uint32 // Entry or Exit
	Verdict string // at Exit: XDP_PASS, XDP_TX, ...
	Len     int    // the packet's length
	Data    []byte // its first Snaplen bytes
}

// PointName is "entry" or "exit".
func (r Record) PointName() string {
	if r.Point == Exit {
		return "exit"
	}
	return "entry"
}

var verdicts = []string{"XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT"}

// ctl mirrors struct capture_cfg.
type ctl struct {
	Points, Ifindex, Snaplen, Rate uint32
	Remaining                      uint64
}

// Capture is a running capture.
type Capture struct {
	prog    *ebpf.Program // the running datapath program
	ext     *ebpf.Program // the same with the filter
	lk      link.Link     // the interface's XDP link
	ctlMap  *ebpf.Map
	events  *ebpf.Map
	rd      *perf.Reader
	swapped bool
	monoOff time.Duration // wall clock minus monotonic clock
}

// Start begins recording.
func Start(o Options) (*Capture, error) {
	if o.Points == 0 || o.Points&^Both != 0 {
		return nil, errors.New("capture point must be entry, exit or both")
	}
	if o.Snaplen <= 0 || o.Snaplen > MaxSnaplen {
		o.Snaplen = MaxSnaplen
	}
	if o.Rate <= 0 {
		return nil, errors.New("capture rate must be positive")
	}
	l, err := netlink.LinkByName(o.Iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", o.Iface, err)
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached || x.ProgId == 0 {
		return nil, fmt.Errorf("no XDP program on %s: is mbx running there?", o.Iface)
	}
	c := &Capture{}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	if c.prog, err = ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgId)); err != nil {
		return nil, fmt.Errorf("the XDP program on %s: %w", o.Iface, err)
	}
	if err := c.findMaps(); err != nil {
		return nil, fmt.Errorf("the XDP program on %s is not mbx's (or too old for capture): %w", o.Iface, err)
	}
	var cur ctl
	if err := c.ctlMap.Lookup(uint32(0), &cur); err == nil && cur.Points != 0 && !o.Force {
		return nil, fmt.Errorf("a capture is already running on this mbx datapath (if it was killed: mbx capture --force)")
	}
	body, err := o.Filter.XDPFunction()
	if err != nil {
		return nil, err
	}
	var monBody asm.Instructions
	if o.MonitorFilter != nil {
		if monBody, err = o.MonitorFilter.XDPFunction(); err != nil {
			return nil, fmt.Errorf("the monitor's filter: %w", err)
		}
	}
	if c.ext, err = xdp.ProgramWithCaptureFilter(c.prog, body, monBody); err != nil {
		return nil, fmt.Errorf("loading the datapath with the filter: %w", err)
	}
	if c.lk, err = xdpLink(l.Attrs().Index); err != nil {
		return nil, err
	}
	if c.rd, err = perf.NewReader(c.events, 64*os.Getpagesize()); err != nil {
		return nil, fmt.Errorf("perf buffer: %w", err)
	}
	if err := c.lk.Update(c.ext); err != nil {
		return nil, fmt.Errorf("swapping in the capturing datapath: %w", err)
	}
	c.swapped = true
	c.monoOff = time.Duration(time.Now().UnixNano() - monotonic())
	remaining := o.Count
	if remaining == 0 {
		remaining = math.MaxUint64
	}
	if err := c.ctlMap.Put(uint32(0), ctl{Points: o.Points, Ifindex: uint32(l.Attrs().Index),
		Snaplen: uint32(o.Snaplen), Rate: uint32(o.Rate), Remaining: remaining}); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// xdpLink finds the bpf_link attaching XDP to ifindex.
func xdpLink(ifindex int) (link.Link, error) {
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Type != link.XDPType {
			continue
		}
		if x := info.XDP(); x != nil && int(x.Ifindex) == ifindex {
			return it.Take(), nil
		}
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("the XDP program is not attached through a bpf_link (not mbx's?)")
}

func (c *Capture) findMaps() error {
	info, err := c.prog.Info()
	if err != nil {
		return err
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		mi, err := m.Info()
		switch {
		case err == nil && mi.Name == "capture_ctl" && c.ctlMap == nil:
			c.ctlMap = m
		case err == nil && mi.Name == "capture_events" && c.events == nil:
			c.events = m
		default:
			m.Close()
		}
	}
	if c.ctlMap == nil || c.events == nil {
		return errors.New("no capture maps")
	}
	return nil
}

func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// metaSize is sizeof(struct capture_meta); its fields are read by offset
// below (bpf2go emits no type for a struct only used on the stack).
const metaSize = 24

// Read waits for the next record; it returns os.ErrDeadlineExceeded when
// the deadline set with SetDeadline passes, and perf.ErrClosed after Close.
func (c *Capture) Read() (Record, int, error) {
	for {
		rec, err := c.rd.Read()
		if err != nil {
			return Record{}, 0, err
		}
		if rec.LostSamples > 0 {
			return Record{}, int(rec.LostSamples), nil
		}
		s := rec.RawSample
		if len(s) < metaSize {
			continue
		}
		ne := binary.NativeEndian
		r := Record{
			Time:    time.Unix(0, int64(ne.Uint64(s[0:]))+int64(c.monoOff)),
			Ifindex: int(ne.Uint32(s[8:])),
			Len:     int(ne.Uint32(s[12:])),
			Point:   uint32(s[20]),
		}
		capLen := int(ne.Uint32(s[16:]))
		if capLen > len(s)-metaSize {
			capLen = len(s) - metaSize
		}
		r.Data = append([]byte(nil), s[metaSize:metaSize+capLen]...)
		if r.Point == Exit && int(s[21]) < len(verdicts) {
			r.Verdict = verdicts[s[21]]
		}
		return r, 0, nil
	}
}

// SetDeadline bounds the next Read.
func (c *Capture) SetDeadline(t time.Time) { c.rd.SetDeadline(t) }

// Close turns capture off and puts the original program back.
func (c *Capture) Close() error {
	if c.ctlMap != nil {
		_ = c.ctlMap.Put(uint32(0), ctl{})
		c.ctlMap.Close()
	}
	if c.rd != nil {
		c.rd.Close()
	}
	if c.lk != nil {
		if c.swapped {
			_ = c.lk.Update(c.prog)
		}
		c.lk.Close()
	}
	if c.ext != nil {
		c.ext.Close()
	}
	if c.events != nil {
		c.events.Close()
	}
	if c.prog != nil {
		c.prog.Close()
	}
	return nil
}

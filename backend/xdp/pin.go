package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/lb"
)

// Maps whose contents outlive a restart: connections, tables, counters.
// tx_ports is rebuilt from the interfaces; config_map is rewritten.
// lb6_prog is pinned for its reference: the kernel empties a program
// array when no process holds it, and a stopped mbx's datapath keeps
// tail-calling mbx_lb6 until the next run takes over.
var pinnedMaps = []string{"conns", "conns6", "lb6_prog", "services", "sched_slots", "sched_bytes", "sched_pos", "reals", "stats", "loads",
	"laddrs", "laddr_conflicts", "local_addrs", "local_bits", "local6", "counters", "persist"}

// ensureBPFFS makes sure dir lies on a bpffs. Under /sys/fs/bpf, where a
// bpffs belongs, it mounts one when missing (ip netns exec gives commands a
// sysfs without it). Elsewhere it only checks: a bpffs mbx mounted in a
// private mount namespace (ip netns exec) would vanish with the process,
// and the state with it.
func ensureBPFFS(dir string) error {
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(probe, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if !strings.HasPrefix(filepath.Clean(dir)+"/", "/sys/fs/bpf/") {
		return fmt.Errorf("--pin-dir %s is not on a bpffs (mount one: mount -t bpf bpf DIR; or --pin-dir none)", dir)
	}
	if err := os.MkdirAll("/sys/fs/bpf", 0o700); err != nil {
		return fmt.Errorf("bpffs: %w", err)
	}
	if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs on /sys/fs/bpf (needed to keep state across restarts; --pin-dir none disables): %w", err)
	}
	return nil
}

// preparePins readies dir for pinning; with fresh it first discards what a
// previous run left there (detaching its pinned links).
func preparePins(spec *ebpf.CollectionSpec, dir string, fresh bool) error {
	if err := ensureBPFFS(dir); err != nil {
		return err
	}
	if fresh {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("removing pinned state %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pin directory: %w", err)
	}
	for _, name := range pinnedMaps {
		spec.Maps[name].Pinning = ebpf.PinByName
	}
	return nil
}

func linkPin(dir, iface string) string { return filepath.Join(dir, "link_"+iface) }

// pinnedLink returns the link a previous run left on iface, if any.
func pinnedLink(dir, iface string) (link.Link, error) {
	if dir == "" {
		return nil, nil
	}
	l, err := link.LoadPinnedLink(linkPin(dir, iface), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return l, err
}

func (r *rangeAlloc) reserve(start, n int) {
	if n == 0 {
		return
	}
	var out []span
	for _, f := range r.free {
		end, rend := f.start+f.n, start+n
		if rend <= f.start || start >= end {
			out = append(out, f)
			continue
		}
		if f.start < start {
			out = append(out, span{f.start, start - f.start})
		}
		if rend < end {
			out = append(out, span{rend, end - rend})
		}
	}
	r.free = out
}

func (a *idAlloc) reserve(id uint32) {
	for a.next <= int(id) && a.next < a.max {
		if a.next != int(id) {
			a.free = append(a.free, uint32(a.next))
		}
		a.next++
	}
	for i, f := range a.free {
		if f == id {
			a.free = append(a.free[:i], a.free[i+1:]...)
			break
		}
	}
}

// adopt rebuilds the Go side's bookkeeping from pinned maps a previous run
// left: which ids, table ranges and LIP ranges services use, which real
// server each id is. The next Apply then reconciles instead of starting
// over, so ids (and the counters they index) survive and nothing a packet
// may still read is reused.
func (b *Backend) adopt() (int, error) {
	var k mbxSvcKey
	var v mbxSvc
	n := 0
	it := b.objs.Services.Iterate()
	var stale []mbxSvcKey
	for it.Next(&k, &v) {
		if k.Family == snatFamily {
			// A match service's key does not say its match: the restored
			// configuration adds it again (its connections carry their own
			// translation and continue).
			stale = append(stale, k)
			continue
		}
		key := lb.ServiceKey{Proto: lb.Proto(k.Proto), Addr: wordsAddr(k.Addr, k.Family), Port: htons(k.Port)}
		if k.Family == 10 {
			b.lb6 |= 1 // until the next Apply: IPv6 flows keep flowing
		}
		ps := &progService{id: v.Id, entry: v, reals: map[netip.AddrPort]uint32{}}
		b.svcIDs.reserve(v.Id)
		b.slots.reserve(int(v.SchedBase)/slotsPerGroup, groupsFor(int(v.SchedLen)))
		if v.Flags&svcFBytes != 0 {
			b.bytes.reserve(byteTable(v))
		}
		b.laddrIdx.reserve(int(v.LaddrBase), int(v.LaddrLen))
		var g mbxSchedGroup
		for i := uint32(0); i < v.SchedLen; i++ {
			slot := v.SchedBase + i
			if i == 0 || slot%slotsPerGroup == 0 {
				if err := b.objs.SchedSlots.Lookup(slot/slotsPerGroup, &g); err != nil {
					return n, err
				}
			}
			id := uint32(g.Real[slot%slotsPerGroup])
			ps.table = append(ps.table, id)
			var r mbxReal
			if err := b.objs.Reals.Lookup(id, &r); err != nil {
				return n, err
			}
			ap := netip.AddrPortFrom(wordsAddr(r.Addr, r.Family), htons(r.Port))
			if k.Family == 10 && r.Family == 2 {
				b.lb6 |= 2
			}
			if _, seen := ps.reals[ap]; !seen {
				ps.reals[ap] = id
				b.realIDs.reserve(id)
			}
		}
		for i := uint32(0); i < v.LaddrLen; i++ {
			var la mbxLaddr
			if err := b.objs.Laddrs.Lookup(v.LaddrBase+i, &la); err != nil {
				return n, err
			}
			ps.laddrs = append(ps.laddrs, wordsAddr(la.Addr, la.Family))
		}
		b.services[key] = ps
		n++
	}
	if err := it.Err(); err != nil {
		return n, err
	}
	for i := range stale {
		_ = b.objs.Services.Delete(&stale[i])
	}
	var lk mbxLocalKey
	var lv uint32
	lit := b.objs.LocalAddrs.Iterate()
	for lit.Next(&lk, &lv) {
		b.locals[lk] = lv
	}
	return n, lit.Err()
}

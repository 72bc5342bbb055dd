package xdp

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/lb"
)

// progService is what is programmed for one service.
type progService struct {
	id        uint32
	entry     mbxSvc
	table     []uint32 // real ids, as written to sched_slots
	laddrs    []netip.Addr
	laddrDevs []string
	reals     map[netip.AddrPort]uint32 // real server -> real id
}

const localBitsWords = 1024

var fwdModes = map[lb.Forward]uint8{lb.FullNAT: 1, lb.DirectRoute: 2, lb.Tunnel: 3, lb.Masquerade: 4, lb.SNAT: 5}

// pickFlags maps lb.Pick onto the datapath's PICK_* and SVC_F_WEIGHTED.
var pickFlags = map[lb.Pick]uint32{
	lb.PickRoundRobin: 0, lb.PickSource: 1, lb.PickDest: 2, lb.PickFlow: 3,
	lb.PickLeast: 4, lb.PickLeastWeighted: 4 | 8,
}

// Apply reconciles the maps with cfg. New tables are written to fresh
// ranges and switched in with one map update per service, so a packet sees
// either the old or the new service, never a mix; established connections
// carry their own rewrite and are not touched.
func (b *Backend) Apply(cfg *lb.Config) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, release := range b.pending {
		release()
	}
	b.pending = nil

	// Each service's scheduler table, computed once per Apply.
	tables := map[lb.ServiceKey][]int{}
	for _, s := range cfg.Services {
		sch, _ := lb.LookupScheduler(s.Scheduler)
		tables[s.Key] = sch.Table(s.Reals, cfg.Maglev)
	}
	if err := b.checkCapacity(cfg, tables); err != nil {
		return err
	}
	if err := b.checkModes(cfg); err != nil {
		return err
	}
	rules, err := snatRuleEntries(cfg)
	if err != nil {
		return err
	}
	plan6, err := b.local6.plan(wantLocal6(cfg))
	if err != nil {
		return err
	}
	lb6 := lb6Flags(cfg)
	if err := b.writeLocal6Adds(plan6); err != nil {
		return err
	}
	if to := cfg.Timeouts.Effective(b.baseTO); to != b.opts.Timeouts || lb6&^b.lb6 != 0 {
		// Flags are only added here (before the services they route to);
		// removed ones follow the services, at the end.
		b.opts.Timeouts = to
		b.lb6 |= lb6
		if err := b.writeConfig(); err != nil {
			return err
		}
	}
	want := map[lb.ServiceKey]bool{}
	wantLocals := map[mbxLocalKey]uint32{}
	for _, s := range cfg.Services {
		want[s.Key] = true
		if err := b.applyService(s, tables[s.Key]); err != nil {
			return fmt.Errorf("service %s: %w", s.Key, err)
		}
		if s.Key.IsMatch() {
			// Replies come back to the WAN addresses, like to LIPs.
			for _, r := range s.Reals {
				wantLocals[localKey(r.Addr)] |= 2
			}
			continue
		}
		wantLocals[localKey(s.Key.Addr)] |= 1
		for _, la := range s.LocalAddrs {
			wantLocals[localKey(la.Addr)] |= 2
		}
	}
	for k, ps := range b.services {
		if !want[k] {
			if err := b.removeService(k, ps); err != nil {
				return err
			}
		}
	}
	for k, v := range wantLocals {
		if b.locals[k] != v {
			if err := b.objs.LocalAddrs.Put(k, v); err != nil {
				return fmt.Errorf("local address map: %w", err)
			}
		}
	}
	for k := range b.locals {
		if _, ok := wantLocals[k]; !ok {
			_ = b.objs.LocalAddrs.Delete(k)
		}
	}
	b.locals = wantLocals
	if err := b.writeLocal6Removes(plan6); err != nil {
		return err
	}
	if err := b.writeSNATRules(rules); err != nil {
		return err
	}
	if err := b.writeNATSrcBits(cfg); err != nil {
		return err
	}
	if len(b.direct) > 0 {
		go b.resolveDirect()
	}
	if b.lb6 != lb6 {
		b.lb6 = lb6
		if err := b.writeConfig(); err != nil {
			return err
		}
	}
	return b.writeLocalBits()
}

// lb6Flags says which packets mbx_xdp must hand to mbx_lb6 (config.lb6):
// IPv6 ones when an IPv6 service exists, unmatched IPv4 ones when a NAT64
// service (IPv6 VIP, IPv4 real servers) does.
func lb6Flags(cfg *lb.Config) uint32 {
	var f uint32
	for _, s := range cfg.Services {
		if s.Key.IsMatch() || !s.Key.Addr.Is6() {
			continue
		}
		f |= 1
		for _, r := range s.Reals {
			if r.Addr.Is4() {
				f |= 2
			}
		}
	}
	return f
}

// writeLocalBits rebuilds the datapath's prefilter from the local addresses.
func (b *Backend) writeLocalBits() error {
	words := make([]uint64, localBitsWords)
	for k := range b.locals {
		if k.Family != 2 {
			continue
		}
		a := wordsAddr(k.Addr, 2).As4()
		low := uint32(a[2])<<8 | uint32(a[3])
		words[low>>6] |= 1 << (low & 63)
	}
	keys := make([]uint32, localBitsWords)
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := b.objs.LocalBits.BatchUpdate(keys, words, nil); err != nil {
		return fmt.Errorf("local_bits: %w", err)
	}
	return nil
}

func (b *Backend) checkCapacity(cfg *lb.Config, tables map[lb.ServiceKey][]int) error {
	nReals, nSlots, nLaddrs := 0, 0, 0
	for _, s := range cfg.Services {
		nReals += len(s.Reals)
		nLaddrs += len(s.LocalAddrs)
		nSlots += groupsFor(len(tables[s.Key])) * slotsPerGroup
	}
	switch {
	case len(cfg.Services) > maxServices:
		return fmt.Errorf("%d services exceed the datapath's %d", len(cfg.Services), maxServices)
	case nReals > maxReals/2: // room for old and new ids during a change
		return fmt.Errorf("%d real servers exceed the datapath's %d", nReals, maxReals/2)
	case nSlots > schedSlots/2:
		return fmt.Errorf("scheduler tables of %d slots exceed the datapath's %d", nSlots, schedSlots/2)
	case nLaddrs > maxLaddrs/2:
		return fmt.Errorf("%d local addresses exceed the datapath's %d", nLaddrs, maxLaddrs/2)
	}
	return nil
}

func localKey(a netip.Addr) mbxLocalKey {
	return mbxLocalKey{Addr: addrWords(a), Family: family(a)}
}

func svcKey(k lb.ServiceKey) mbxSvcKey {
	if k.IsMatch() {
		return mbxSvcKey{Addr: [4]uint32{matchHash(k.Match)}, Proto: uint8(k.Proto), Family: snatFamily}
	}
	return mbxSvcKey{Addr: addrWords(k.Addr), Port: htons(k.Port), Proto: uint8(k.Proto), Family: family(k.Addr)}
}

func (b *Backend) applyService(s *lb.Service, schedTable []int) error {
	ps := b.services[s.Key]
	fresh := ps == nil
	if fresh {
		id, err := b.svcIDs.alloc()
		if err != nil {
			return err
		}
		ps = &progService{id: id, reals: map[netip.AddrPort]uint32{}}
		ps.entry.Id = id
		// Start the round-robin position at 0: deterministic order.
		if err := b.objs.SchedPos.Put(id, uint32(0)); err != nil {
			return fmt.Errorf("sched_pos: %w", err)
		}
	}

	// Real server ids and entries.
	keep := map[netip.AddrPort]bool{}
	ids := make([]uint32, len(s.Reals))
	for i, r := range s.Reals {
		ap := r.AddrPort()
		keep[ap] = true
		id, ok := ps.reals[ap]
		if !ok {
			var err error
			if id, err = b.realIDs.alloc(); err != nil {
				return err
			}
			if err := b.objs.Stats.Put(id, make([]mbxRealStats, runtime.NumCPU())); err != nil {
				return fmt.Errorf("stats: %w", err)
			}
			ps.reals[ap] = id
		}
		ids[i] = id
		entry := mbxReal{Addr: addrWords(r.Addr), Port: htons(s.RealPort(r)), Family: family(r.Addr), Mode: fwdModes[r.Forward], Weight: uint32(r.Weight)}
		if err := b.objs.Reals.Put(id, &entry); err != nil {
			return fmt.Errorf("reals: %w", err)
		}
	}

	// Scheduler table and how the datapath indexes it.
	sch, _ := lb.LookupScheduler(s.Scheduler)
	table := make([]uint32, len(schedTable))
	for i, idx := range schedTable {
		table[i] = ids[idx]
	}
	entry := ps.entry
	entry.Flags = pickFlags[sch.Pick()] | ps.entry.Flags&^(svcFBytes-1) // keep the byte table's bits
	entry.PersistS = uint32(s.Persistence)
	if fresh || !slices.Equal(table, ps.table) {
		if err := b.writeByteTable(&entry, table, fresh); err != nil {
			return err
		}
		groups := packSlots(table)
		base, err := b.slots.alloc(len(groups))
		if err != nil {
			return err
		}
		keys := make([]uint32, len(groups))
		for i := range keys {
			keys[i] = uint32(base + i)
		}
		if len(groups) > 0 {
			if _, err := b.objs.SchedSlots.BatchUpdate(keys, groups, nil); err != nil {
				return fmt.Errorf("sched_slots: %w", err)
			}
		}
		oldBase, oldLen := int(entry.SchedBase)/slotsPerGroup, groupsFor(int(entry.SchedLen))
		if !fresh {
			b.pending = append(b.pending, func() { b.slots.release(oldBase, oldLen) })
		}
		entry.SchedBase, entry.SchedLen = uint32(base*slotsPerGroup), uint32(len(table))
		ps.table = table
	}

	// LIP list.
	var laddrs []netip.Addr
	var devs []string
	for _, la := range s.LocalAddrs {
		laddrs = append(laddrs, la.Addr)
		devs = append(devs, la.Dev)
	}
	if fresh || !slices.Equal(laddrs, ps.laddrs) {
		base, err := b.laddrIdx.alloc(len(laddrs))
		if err != nil {
			return err
		}
		for i, a := range laddrs {
			if err := b.objs.Laddrs.Put(uint32(base+i), &mbxLaddr{Addr: addrWords(a), Family: family(a)}); err != nil {
				return fmt.Errorf("laddrs: %w", err)
			}
			if err := b.objs.LaddrConflicts.Put(uint32(base+i), make([]uint64, runtime.NumCPU())); err != nil {
				return fmt.Errorf("laddr_conflicts: %w", err)
			}
		}
		oldBase, oldLen := int(entry.LaddrBase), int(entry.LaddrLen)
		if !fresh {
			b.pending = append(b.pending, func() { b.laddrIdx.release(oldBase, oldLen) })
		}
		entry.LaddrBase, entry.LaddrLen = uint32(base), uint32(len(laddrs))
		ps.laddrs = laddrs
	}
	ps.laddrDevs = devs

	if fresh || entry != ps.entry {
		if err := b.objs.Services.Put(svcKey(s.Key), &entry); err != nil {
			return fmt.Errorf("services: %w", err)
		}
		ps.entry = entry
	}
	b.services[s.Key] = ps

	// Real servers no longer in the service: keep their counters in the
	// service's total, free their ids once no reader can hold them.
	for ap, id := range ps.reals {
		if !keep[ap] {
			b.retireReal(s.Key, id)
			delete(ps.reals, ap)
		}
	}
	return nil
}

func (b *Backend) retireReal(k lb.ServiceKey, id uint32) {
	// Mode 0 marks the id unusable: persistence templates pointing at it
	// schedule afresh.
	_ = b.objs.Reals.Update(id, mbxReal{}, ebpf.UpdateExist)
	c, _ := b.realCounters(id)
	r := b.retired[k]
	r.Add(c)
	b.retired[k] = r
	b.pending = append(b.pending, func() { b.realIDs.release(id) })
}

func (b *Backend) removeService(k lb.ServiceKey, ps *progService) error {
	if err := b.objs.Services.Delete(svcKey(k)); err != nil && err != ebpf.ErrKeyNotExist {
		return fmt.Errorf("services: %w", err)
	}
	e := ps.entry
	b.pending = append(b.pending, func() {
		// The allocator counts sched_slots groups, not slots.
		b.slots.release(int(e.SchedBase)/slotsPerGroup, groupsFor(int(e.SchedLen)))
		if e.Flags&svcFBytes != 0 {
			b.bytes.release(byteTable(e))
		}
		b.laddrIdx.release(int(e.LaddrBase), int(e.LaddrLen))
		b.svcIDs.release(ps.id)
	})
	for _, id := range ps.reals {
		b.retireReal(k, id)
	}
	delete(b.services, k)
	delete(b.retired, k)
	return nil
}

func (b *Backend) realCounters(id uint32) (backend.Counters, error) {
	var per []mbxRealStats
	if err := b.objs.Stats.Lookup(id, &per); err != nil {
		return backend.Counters{}, err
	}
	var c backend.Counters
	for _, s := range per {
		c.Conns += s.Conns
		c.InPkts += s.Inpkts
		c.OutPkts += s.Outpkts
		c.InBytes += s.Inbytes
		c.OutBytes += s.Outbytes
	}
	return c, nil
}

func groupsFor(slots int) int { return (slots + slotsPerGroup - 1) / slotsPerGroup }

// byteGroups is how many sched_bytes groups a byte table of slots slots
// over nreals real servers takes: the id list, then the table (half a byte
// per slot up to maxNibbleReals).
func byteGroups(nreals, slots int) int {
	per := bytesPerGroup
	if nreals <= maxNibbleReals {
		per *= 2
	}
	return (nreals+3)/4 + (slots+per-1)/per
}

// byteTable is the sched_bytes range of a service with SVC_F_BYTES: its
// first group and how many.
func byteTable(e mbxSvc) (base, groups int) {
	return int(e.ByteBase), byteGroups(int(e.Flags>>svcNRealsShift&0xff), int(e.SchedLen))
}

// packBytes lays a table of at most maxByteReals distinct real ids out as
// sched_bytes groups (maps.h): the ids, little-endian 16-bit, four per
// group, then one index into them per slot, a byte each, or half a byte
// (low half first) with at most maxNibbleReals; ok false when there are
// more.
func packBytes(table []uint32) (groups []mbxSchedByteGroup, nreals int, ok bool) {
	index := map[uint32]int{}
	var list []uint32
	for _, id := range table {
		if _, seen := index[id]; !seen {
			index[id] = len(list)
			list = append(list, id)
		}
	}
	if len(list) > maxByteReals || len(list) == 0 {
		return nil, 0, false
	}
	groups = make([]mbxSchedByteGroup, byteGroups(len(list), len(table)))
	for i, id := range list {
		groups[i/4].B[i%4*2], groups[i/4].B[i%4*2+1] = uint8(id), uint8(id>>8)
	}
	first := (len(list) + 3) / 4
	for i, id := range table {
		if len(list) <= maxNibbleReals {
			groups[first+i/(2*bytesPerGroup)].B[i/2%bytesPerGroup] |= uint8(index[id]) << uint(i%2*4)
		} else {
			groups[first+i/bytesPerGroup].B[i%bytesPerGroup] = uint8(index[id])
		}
	}
	return groups, len(list), true
}

// writeByteTable gives a service of at most maxByteReals real servers its
// byte table (a fresh range, switched in with the service entry) and
// releases the old one after the switch; others lose SVC_F_BYTES.
func (b *Backend) writeByteTable(entry *mbxSvc, table []uint32, fresh bool) error {
	if !fresh && entry.Flags&svcFBytes != 0 {
		oldBase, oldLen := byteTable(*entry)
		b.pending = append(b.pending, func() { b.bytes.release(oldBase, oldLen) })
	}
	entry.Flags &^= svcFBytes | svcFNibbles | 0xff<<svcNRealsShift
	entry.ByteBase = 0
	groups, nreals, ok := packBytes(table)
	if !ok {
		return nil
	}
	base, err := b.bytes.alloc(len(groups))
	if err != nil {
		return nil // no room: the 16-bit table serves
	}
	keys := make([]uint32, len(groups))
	for i := range keys {
		keys[i] = uint32(base + i)
	}
	if _, err := b.objs.SchedBytes.BatchUpdate(keys, groups, nil); err != nil {
		b.bytes.release(base, len(groups))
		return fmt.Errorf("sched_bytes: %w", err)
	}
	entry.Flags |= svcFBytes | uint32(nreals)<<svcNRealsShift
	if nreals <= maxNibbleReals {
		entry.Flags |= svcFNibbles
	}
	entry.ByteBase = uint32(base)
	return nil
}

// packSlots lays a scheduler table out as sched_slots elements.
func packSlots(table []uint32) []mbxSchedGroup {
	groups := make([]mbxSchedGroup, groupsFor(len(table)))
	for i, id := range table {
		groups[i/slotsPerGroup].Real[i%slotsPerGroup] = uint16(id)
	}
	return groups
}

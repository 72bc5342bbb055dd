package xdp

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/filter"
)

// BrickFilterFunc is the datapath's Filter-brick function (bricks.h).
const BrickFilterFunc = "mbx_brick_filter"

const engineNoLB = 1 // ENGINE_F_NO_LB

// brickEngine is a running engine as this backend set it up.
type brickEngine struct {
	iface   string
	ifindex int
	link    link.Link // attached for the engine (an interface mbx does not balance on)
}

// brickState is what ApplyBricks last wrote.
type brickState struct {
	nodes   map[uint32]mbxBrickNode
	labels  map[uint32]string // node id -> whose counters it holds
	ports   map[int]bool
	xsks    map[uint32]bool // AF_XDP output slots in use
	dups    map[uint32][]int
	filters string        // the filter set the variant was built for
	variant *ebpf.Program // mbx_bricks with the filters; nil: the plain one
	engines map[string]*brickEngine
}

func (b *Backend) bricks() *brickState {
	if b.brick == nil {
		b.brick = &brickState{nodes: map[uint32]mbxBrickNode{}, labels: map[uint32]string{},
			ports: map[int]bool{}, xsks: map[uint32]bool{}, dups: map[uint32][]int{}, engines: map[string]*brickEngine{}}
	}
	return b.brick
}

func ifindexOf(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return l.Attrs().Index, nil
}

// ApplyBricks makes the datapath run plan. Everything is resolved and
// built before the first write, so a plan that cannot run changes nothing;
// writes go leaves first (ports, nodes, filters) and engines last, and what
// the old plan used alone is removed after the engines moved off it.
func (b *Backend) ApplyBricks(plan *bricks.Plan) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.bricks()

	// Resolve and build.
	ports := map[int]bool{}
	nodes := map[uint32]mbxBrickNode{}
	dups := map[uint32][]int{}
	filters := map[uint32]*filter.Filter{}
	devIndex := map[uint32]int{}
	for _, n := range plan.Nodes {
		if n.Kind == bricks.NodeOutput {
			idx, err := ifindexOf(n.Device)
			if err != nil {
				return fmt.Errorf("output %s: %w", n.Output, err)
			}
			ports[idx] = true
			devIndex[n.ID] = idx
		}
	}
	for _, n := range plan.Nodes {
		var bn mbxBrickNode
		bn.Kind = uint8(n.Kind)
		if n.Hash == bricks.Hash4Tuple {
			bn.Hash = 1
		}
		bn.Nchild = uint16(len(n.Children))
		for i, c := range n.Children {
			bn.Child[i] = uint16(c)
		}
		switch n.Kind {
		case bricks.NodeOutput:
			bn.Arg = uint32(devIndex[n.ID])
		case bricks.NodeFilter:
			bn.Arg = n.ID
			filters[n.ID] = n.Filter
		case bricks.NodeXSK:
			bn.Arg = n.Dup
		case bricks.NodeDup:
			bn.Arg = n.Dup
			for _, c := range n.Children {
				dups[n.Dup] = append(dups[n.Dup], devIndex[c])
			}
		}
		nodes[n.ID] = bn
	}
	type engineSlot struct {
		pe      bricks.PlanEngine
		ifindex int
		noLB    bool
	}
	var engines []engineSlot
	slotOwner := map[int]string{}
	for _, pe := range plan.Engines {
		idx, err := ifindexOf(pe.Iface)
		if err != nil {
			return fmt.Errorf("engine %s: %w", pe.Name, err)
		}
		if ports[idx] {
			return fmt.Errorf("engine %s: its input %s is also an output", pe.Name, pe.Iface)
		}
		slot := idx % ifSlots
		if other, ok := slotOwner[slot]; ok {
			return fmt.Errorf("engines %s and %s: interfaces whose indexes differ by a multiple of %d cannot both run engines", other, pe.Name, ifSlots)
		}
		slotOwner[slot] = pe.Name
		engines = append(engines, engineSlot{pe: pe, ifindex: idx, noLB: !slices.Contains(b.opts.Ifaces, pe.Iface)})
	}
	var keys []string
	for id, f := range filters {
		keys = append(keys, strconv.Itoa(int(id))+"="+f.Expr)
	}
	sort.Strings(keys)
	filterKey := strings.Join(keys, "\x00")
	var variant *ebpf.Program
	if filterKey != st.filters && len(filters) > 0 {
		body, err := filter.XDPDispatch(filters)
		if err != nil {
			return err
		}
		if variant, err = programVariant("mbx_bricks", map[string]asm.Instructions{BrickFilterFunc: body}, b.mapByName); err != nil {
			return fmt.Errorf("loading the bricks with their filters: %w", err)
		}
	}
	fail := func(err error) error {
		if variant != nil {
			variant.Close()
		}
		return err
	}

	// Write: ports, duplicator port sets, nodes, the program, engines.
	for idx := range ports {
		if !st.ports[idx] {
			if err := b.objs.BrickPorts.Put(uint32(idx), uint32(idx)); err != nil {
				return fail(fmt.Errorf("adding output ifindex %d: %w", idx, err))
			}
		}
	}
	for id, devs := range dups {
		if slices.Equal(st.dups[id], devs) {
			continue
		}
		inner, err := ebpf.NewMap(b.dupSpec())
		if err != nil {
			return fail(fmt.Errorf("duplicator ports: %w", err))
		}
		for _, d := range devs {
			if err := inner.Put(uint32(d), uint32(d)); err != nil {
				inner.Close()
				return fail(fmt.Errorf("duplicator ports: %w", err))
			}
		}
		err = b.objs.BrickDups.Put(id, inner)
		inner.Close() // the outer map holds it
		if err != nil {
			return fail(fmt.Errorf("duplicator ports: %w", err))
		}
	}
	labels := map[uint32]string{}
	for _, n := range plan.Nodes {
		labels[n.ID] = n.Label
	}
	for id, bn := range nodes {
		if st.labels[id] != labels[id] {
			if err := b.zeroBrickStats(id); err != nil {
				return fail(err)
			}
		}
		if old, ok := st.nodes[id]; ok && old == bn {
			continue
		}
		if err := b.objs.BrickNodes.Put(id, &bn); err != nil {
			return fail(fmt.Errorf("brick node %d: %w", id, err))
		}
	}
	prog := b.objs.MbxBricks
	if variant != nil {
		prog = variant
	} else if filterKey == st.filters && st.variant != nil {
		prog = st.variant
	}
	if err := b.objs.BrickProg.Put(uint32(0), prog); err != nil {
		return fail(fmt.Errorf("installing the brick program: %w", err))
	}
	if variant != nil || len(filters) == 0 {
		if st.variant != nil && st.variant != prog {
			st.variant.Close()
		}
		st.variant = variant
	}
	st.filters = filterKey

	running := map[string]bool{}
	for _, es := range engines {
		running[es.pe.Name] = true
		if err := b.startEngine(st, es.pe, es.ifindex, es.noLB); err != nil {
			return err // the engines before it run; the caller reports the error
		}
	}
	for name, e := range st.engines {
		if !running[name] {
			b.stopEngine(e)
			delete(st.engines, name)
		}
	}

	// Remove what only the old plan used.
	for id := range st.nodes {
		if _, ok := nodes[id]; !ok {
			_ = b.objs.BrickNodes.Put(id, &mbxBrickNode{})
		}
	}
	for id := range st.dups {
		if _, ok := dups[id]; !ok {
			_ = b.objs.BrickDups.Delete(id)
		}
	}
	for idx := range st.ports {
		if !ports[idx] {
			_ = b.objs.BrickPorts.Delete(uint32(idx))
		}
	}
	xsks := map[uint32]bool{}
	for _, x := range plan.XSKs {
		xsks[x.Slot] = true
	}
	for slot := range st.xsks {
		if !xsks[slot] {
			// A consumer of a gone output must not get its slot's next owner's packets.
			for q := range uint32(bricks.XSKQueues) {
				_ = b.objs.BrickXsks.Delete(slot*bricks.XSKQueues + q)
			}
		}
	}
	st.xsks = xsks
	for id, l := range labels {
		st.labels[id] = l
	}
	st.nodes, st.dups, st.ports = nodes, dups, ports
	return nil
}

func (b *Backend) dupSpec() *ebpf.MapSpec {
	spec, err := loadMbx()
	if err != nil || spec.Maps["brick_dups"].InnerMap == nil {
		// The generated spec always has it; this only guards a bad build.
		return &ebpf.MapSpec{Type: ebpf.DevMapHash, KeySize: 4, ValueSize: 4, MaxEntries: bricks.MaxOutputs}
	}
	return spec.Maps["brick_dups"].InnerMap.Copy()
}

func (b *Backend) zeroBrickStats(id uint32) error {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := b.objs.BrickStats.Put(id, make([]mbxBrickCounters, n)); err != nil {
		return fmt.Errorf("resetting brick counters: %w", err)
	}
	return nil
}

// startEngine writes the engine's slot and, on an interface the load
// balancer does not run on, attaches the datapath there (slot first: the
// program must never load-balance a tap interface's traffic).
func (b *Backend) startEngine(st *brickState, pe bricks.PlanEngine, ifindex int, noLB bool) error {
	e := st.engines[pe.Name]
	if e != nil && e.ifindex != ifindex {
		b.stopEngine(e)
		e = nil
	}
	var v mbxBrickEngine
	v.Ifindex, v.Root, v.Seed = uint32(ifindex), pe.Root, b.opts.HashSeed
	if noLB {
		v.Flags = engineNoLB
	}
	if err := b.objs.BrickEngines.Put(uint32(ifindex%ifSlots), &v); err != nil {
		return fmt.Errorf("engine %s: %w", pe.Name, err)
	}
	if e == nil {
		e = &brickEngine{iface: pe.Iface, ifindex: ifindex}
		if noLB {
			flags := link.XDPDriverMode
			if b.opts.XDPMode == "generic" {
				flags = link.XDPGenericMode
			}
			lk, err := link.AttachXDP(link.XDPOptions{Program: b.objs.MbxXdp, Interface: ifindex, Flags: flags})
			if err != nil {
				_ = b.objs.BrickEngines.Put(uint32(ifindex%ifSlots), &mbxBrickEngine{})
				return fmt.Errorf("engine %s: attaching XDP to %s: %w", pe.Name, pe.Iface, err)
			}
			e.link = lk
		}
		st.engines[pe.Name] = e
	}
	if pe.CPU != nil {
		if err := pinNAPI(pe.Iface, *pe.CPU); err != nil {
			return fmt.Errorf("engine %s: %w", pe.Name, err)
		}
	}
	return nil
}

func (b *Backend) stopEngine(e *brickEngine) {
	_ = b.objs.BrickEngines.Put(uint32(e.ifindex%ifSlots), &mbxBrickEngine{})
	if e.link != nil {
		e.link.Close()
	}
}

// closeBricks stops every engine (Close and Handover: brick engines are not
// kept across restarts).
func (b *Backend) closeBricks() {
	if b.brick == nil {
		return
	}
	for _, e := range b.brick.engines {
		b.stopEngine(e)
	}
	if b.brick.variant != nil {
		b.brick.variant.Close()
	}
	b.brick = nil
}

// BrickStats reads every node's counters, summed over CPUs.
func (b *Backend) BrickStats() (map[uint32]backend.BrickCounters, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[uint32]backend.BrickCounters{}
	if b.brick == nil {
		return out, nil
	}
	for id := range b.brick.labels {
		var per []mbxBrickCounters
		if err := b.objs.BrickStats.Lookup(id, &per); err != nil {
			return nil, err
		}
		var c backend.BrickCounters
		for _, p := range per {
			c.Pkts += p.Pkts
			c.Bytes += p.Bytes
			c.Drops += p.Drops
			c.Skipped += p.Skipped
		}
		out[id] = c
	}
	return out, nil
}

// pinNAPI moves an interface's receive processing (where XDP, and so the
// engine, runs) to one CPU: threaded NAPI, then the NAPI threads' affinity.
func pinNAPI(iface string, cpu int) error {
	p := filepath.Join("/sys/class/net", iface, "threaded")
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("threaded NAPI on %s (needed to pin it to cpu %d): %w", iface, cpu, err)
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	var set unix.CPUSet
	set.Set(cpu)
	found := 0
	for _, d := range dirs {
		comm, err := os.ReadFile(d)
		if err != nil || !strings.HasPrefix(strings.TrimSpace(string(comm)), "napi/"+iface+"-") {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err := unix.SchedSetaffinity(pid, &set); err != nil {
			return fmt.Errorf("pinning %s's NAPI thread to cpu %d: %w", iface, cpu, err)
		}
		found++
	}
	if found == 0 {
		return fmt.Errorf("no NAPI thread for %s after enabling threaded NAPI", iface)
	}
	return nil
}

// mapByName finds one of the loaded datapath's maps by its BPF name.
func (b *Backend) mapByName(name string) *ebpf.Map {
	v := reflect.ValueOf(&b.objs.mbxMaps).Elem()
	for i := range v.NumField() {
		if v.Type().Field(i).Tag.Get("ebpf") == name {
			m, _ := v.Field(i).Interface().(*ebpf.Map)
			return m
		}
	}
	return nil
}

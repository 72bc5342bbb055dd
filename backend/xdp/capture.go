package xdp

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// CaptureFilterFunc is the datapath's capture-filter function (capture.h).
const CaptureFilterFunc = "mbx_capture_filter"

// ProgramWithCaptureFilter loads another instance of the datapath program
// whose capture-filter function is body (a function of the XDP context
// returning nonzero to record), sharing every map with running, the program
// mbx has attached. Swapped into the XDP link, it records what body selects;
// swapping running back ends that. monitorFilter, when set, is the stream
// filter of the monitor running in that datapath (the daemon's
// --monitor-filter), which the copy must keep: it replaces every filter
// function at once. (The filter would better be a freplace extension of
// the running program, but this kernel refuses loading those with EPERM;
// and the running program's own code cannot be reused, since the kernel
// rewrites its context accesses.)
func ProgramWithCaptureFilter(running *ebpf.Program, body, monitorFilter asm.Instructions) (*ebpf.Program, error) {
	info, err := running.Info()
	if err != nil {
		return nil, err
	}
	ids, _ := info.MapIDs()
	maps := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	spec, err := loadMbx()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, fmt.Errorf("map %d of the running program: %w", id, err)
		}
		mi, err := m.Info()
		if err != nil {
			m.Close()
			return nil, err
		}
		name := specMapName(spec, mi.Name)
		if name == "" {
			m.Close()
			continue // e.g. .rodata of another build
		}
		maps[name] = m
	}
	funcs := map[string]asm.Instructions{CaptureFilterFunc: body}
	if monitorFilter != nil {
		funcs[MonitorFilterFunc] = monitorFilter
	}
	return programVariant("mbx_xdp", funcs, func(name string) *ebpf.Map { return maps[name] })
}

// programVariant loads another instance of the datapath program prog with
// each function named in funcs replaced by its body, its maps (by spec
// name) from mapFor: the running datapath's, so the instance shares every
// map with it.
func programVariant(prog string, funcs map[string]asm.Instructions, mapFor func(string) *ebpf.Map) (*ebpf.Program, error) {
	spec, err := loadMbx()
	if err != nil {
		return nil, err
	}
	ps := spec.Programs[prog].Copy()
	insns := ps.Instructions
	for fn, body := range funcs {
		if insns, err = replaceFunc(insns, fn, body); err != nil {
			return nil, err
		}
	}
	for name := range spec.Maps {
		m := mapFor(name)
		if m == nil {
			continue
		}
		if err := insns.AssociateMap(name, m); err != nil && !errors.Is(err, asm.ErrUnreferencedSymbol) {
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
	}
	ps.Instructions = insns
	return ebpf.NewProgram(ps)
}

// replaceFunc returns insns with the function named fn replaced by body
// (keeping fn's BTF so the verifier checks the same signature).
func replaceFunc(insns asm.Instructions, fn string, body asm.Instructions) (asm.Instructions, error) {
	start := -1
	for i := range insns {
		if insns[i].Symbol() == fn {
			start = i
			break
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("no function %s in the datapath", fn)
	}
	end := len(insns)
	for i := start + 1; i < len(insns); i++ {
		if btf.FuncMetadata(&insns[i]) != nil {
			end = i
			break
		}
	}
	body = scopeLabels(body, fn)
	body[0] = btf.WithFuncMetadata(body[0].WithSymbol(fn).WithSource(insns[start].Source()), btf.FuncMetadata(&insns[start]))
	out := append(asm.Instructions(nil), insns[:start]...)
	out = append(out, body...)
	return append(out, insns[end:]...), nil
}

// scopeLabels returns a copy of body whose own labels (and the jumps to
// them) are prefixed with fn, so bodies built by the same generator (two
// filters) can replace two functions of one program.
func scopeLabels(body asm.Instructions, fn string) asm.Instructions {
	own := map[string]bool{}
	for _, ins := range body {
		if sym := ins.Symbol(); sym != "" {
			own[sym] = true
		}
	}
	out := make(asm.Instructions, len(body))
	for i, ins := range body {
		if sym := ins.Symbol(); sym != "" {
			ins = ins.WithSymbol(fn + "." + sym)
		}
		if ref := ins.Reference(); own[ref] {
			ins = ins.WithReference(fn + "." + ref)
		}
		out[i] = ins
	}
	return out
}

// specMapName finds the spec's map the kernel calls kname (the kernel keeps
// only the first 15 characters of a name).
func specMapName(spec *ebpf.CollectionSpec, kname string) string {
	for name := range spec.Maps {
		if name == kname || (len(name) > 15 && name[:15] == kname) {
			return name
		}
	}
	return ""
}

package bench

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Harness runs a program under test on the same frame many times with
// BPF_PROG_TEST_RUN's repeat, restoring the frame before every run (the
// kernel does not: a rewriting program would otherwise time a different
// path from the second run on). It writes the original bytes back with
// direct packet stores and tail-calls the program under test (which must be
// loaded with the XDP attach type, as bpf2go programs are: the kernel refuses
// tail calls between programs of different attach types).
type Harness struct {
	prog   *ebpf.Program
	frames *ebpf.Map
	progs  *ebpf.Map
	frame  []byte
}

// NewHarness builds a harness for frame around target.
func NewHarness(target *ebpf.Program, frame []byte) (*Harness, error) {
	return newHarness(target, frame, -1)
}

// NewHarnessNewFlows is NewHarness writing a counter into the 32 bits at
// off (the IPv4 source address) after each restore, so every run is a new
// flow (the checksums are then wrong, which the datapath does not check).
func NewHarnessNewFlows(target *ebpf.Program, frame []byte, off int) (*Harness, error) {
	return newHarness(target, frame, off)
}

func newHarness(target *ebpf.Program, frame []byte, portOff int) (*Harness, error) {
	frames, err := NewTemplate(frame)
	if err != nil {
		return nil, err
	}
	progs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		frames.Close()
		return nil, err
	}
	if err := progs.Put(uint32(0), target); err != nil {
		frames.Close()
		progs.Close()
		return nil, fmt.Errorf("tail-call map: %w", err)
	}
	insns := RestoreFrame(frames, len(frame), "out")
	if portOff >= 0 {
		ctr, err := NewCounter()
		if err != nil {
			return nil, err
		}
		defer ctr.Close() // the program holds it
		insns = append(insns, NextCounter(ctr, "out")...)
		insns = append(insns, asm.StoreMem(asm.R7, int16(portOff), asm.R3, asm.Word))
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, progs.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL", Instructions: insns})
	if err != nil {
		frames.Close()
		progs.Close()
		return nil, fmt.Errorf("restore harness: %w", err)
	}
	return &Harness{prog: prog, frames: frames, progs: progs, frame: frame}, nil
}

// Close releases the harness.
func (h *Harness) Close() {
	h.prog.Close()
	h.frames.Close()
	h.progs.Close()
}

// Run executes the harness repeat times on a packet received on ifindex.
func (h *Harness) Run(ifindex, repeat int) (uint32, time.Duration, error) {
	return RunXDP(h.prog, ifindex, h.frame, repeat, 0)
}

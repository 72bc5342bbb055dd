package bench

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
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
	frames, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(len(frame)), MaxEntries: 1})
	if err != nil {
		return nil, err
	}
	if err := frames.Put(uint32(0), frame); err != nil {
		frames.Close()
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
	// Restore with direct packet stores (cheaper than bpf_xdp_store_bytes).
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R8, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Add.Imm(asm.R2, int32(len(frame))),
		asm.JGT.Reg(asm.R2, asm.R8, "out"),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, frames.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
	}
	for off := 0; off < len(frame); {
		size, n := asm.DWord, 8
		switch rem := len(frame) - off; {
		case rem >= 8:
		case rem >= 4:
			size, n = asm.Word, 4
		case rem >= 2:
			size, n = asm.Half, 2
		default:
			size, n = asm.Byte, 1
		}
		insns = append(insns,
			asm.LoadMem(asm.R3, asm.R0, int16(off), size),
			asm.StoreMem(asm.R7, int16(off), asm.R3, size))
		off += n
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, progs.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	)
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL", Instructions: insns}, ebpf.ProgramOptions{})
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

type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// progRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr. Written by
// hand because cilium/ebpf's Run does not return the kernel's own per-run
// duration, which excludes syscall overhead.
type progRunAttr struct {
	progFd, retval, dataSizeIn, dataSizeOut uint32
	dataIn, dataOut                         uint64
	repeat, duration                        uint32
	ctxSizeIn, ctxSizeOut                   uint32
	ctxIn, ctxOut                           uint64
	flags, cpu, batchSize                   uint32
	_                                       uint32
}

// Run executes the harness repeat times on a packet received on ifindex
// (call it inside the namespace holding ifindex) and returns the last
// verdict and the kernel's average time per run.
func (h *Harness) Run(ifindex, repeat int) (uint32, time.Duration, error) {
	return runRepeat(h.prog, ifindex, h.frame, repeat)
}

// runRepeat runs prog repeat times on frame and returns the last verdict and
// the kernel's average time per run.
func runRepeat(prog *ebpf.Program, ifindex int, frame []byte, repeat int) (uint32, time.Duration, error) {
	data := append([]byte(nil), frame...)
	ctx := xdpMd{DataEnd: uint32(len(data)), IngressIfindex: uint32(ifindex)}
	attr := progRunAttr{
		progFd:     uint32(prog.FD()),
		dataSizeIn: uint32(len(data)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&data[0]))),
		repeat:     uint32(repeat),
		ctxSizeIn:  uint32(unsafe.Sizeof(ctx)),
		ctxIn:      uint64(uintptr(unsafe.Pointer(&ctx))),
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, 0, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
		}
		return attr.retval, time.Duration(attr.duration), nil
	}
}

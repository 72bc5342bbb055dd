package bench

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// RestoreFrame returns instructions that copy a frame template (the single
// value of tmpl, frameLen bytes) over the packet, leaving R6 = ctx and
// R7 = data. They jump to label fail when the packet is shorter. Used by the
// restore harness and by the live-frames generator, whose pages are
// recycled without being reset.
func RestoreFrame(tmpl *ebpf.Map, frameLen int, fail string) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R8, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Add.Imm(asm.R2, int32(frameLen)),
		asm.JGT.Reg(asm.R2, asm.R8, fail),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, tmpl.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, fail),
	}
	for off := 0; off < frameLen; {
		size, n := asm.DWord, 8
		switch rem := frameLen - off; {
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
	return insns
}

// NextCounter returns instructions that increment a per-CPU counter in ctr
// (a one-entry PerCPUArray of uint32) and leave the new value in R3,
// jumping to skip when the map lookup fails. It uses the stack slot at
// RFP-4, which RestoreFrame leaves holding key 0.
func NextCounter(ctr *ebpf.Map, skip string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, ctr.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, skip),
		asm.LoadMem(asm.R3, asm.R0, 0, asm.Word),
		asm.Add.Imm(asm.R3, 1),
		asm.StoreMem(asm.R0, 0, asm.R3, asm.Word),
	}
}

// NewCounter makes the map NextCounter increments.
func NewCounter() (*ebpf.Map, error) {
	return ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
}

// NewTemplate stores frame as the single value of a new array map.
func NewTemplate(frame []byte) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(len(frame)), MaxEntries: 1})
	if err != nil {
		return nil, err
	}
	if err := m.Put(uint32(0), frame); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// progRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr. Written by
// hand because cilium/ebpf's Run returns neither the kernel's own per-run
// duration (which excludes syscall overhead) with a context, nor takes the
// live-frames batch size with one.
type progRunAttr struct {
	progFd, retval, dataSizeIn, dataSizeOut uint32
	dataIn, dataOut                         uint64
	repeat, duration                        uint32
	ctxSizeIn, ctxSizeOut                   uint32
	ctxIn, ctxOut                           uint64
	flags, cpu, batchSize                   uint32
	_                                       uint32
}

// LiveFrames is BPF_F_TEST_XDP_LIVE_FRAMES: frames really go out (generator).
const LiveFrames = 2

// RunXDP runs an XDP program repeat times on frame as received on ifindex
// (call it inside the namespace holding ifindex) and returns the last
// verdict and the kernel's average time per run.
func RunXDP(prog *ebpf.Program, ifindex int, frame []byte, repeat int, flags uint32) (uint32, time.Duration, error) {
	data := append([]byte(nil), frame...)
	ctx := xdpMd{DataEnd: uint32(len(data)), IngressIfindex: uint32(ifindex)}
	attr := progRunAttr{
		progFd:     uint32(prog.FD()),
		dataSizeIn: uint32(len(data)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&data[0]))),
		repeat:     uint32(repeat),
		ctxSizeIn:  uint32(unsafe.Sizeof(ctx)),
		ctxIn:      uint64(uintptr(unsafe.Pointer(&ctx))),
		flags:      flags,
	}
	if flags&LiveFrames != 0 {
		attr.batchSize = 64
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

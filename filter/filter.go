// Package filter compiles tcpdump filter expressions for mbx's datapaths:
// libpcap's own compiler gives the classic BPF program (so a filter selects
// exactly what tcpdump selects), and cloudflare/cbpfc turns it into eBPF
// that runs inside XDP. The capture command, the stream monitor and the
// bricks' Filter share it.
package filter

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf/asm"
	"github.com/cloudflare/cbpfc"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcap"
	"golang.org/x/net/bpf"
)

// Snaplen is what filters are compiled for: libpcap only uses it to decide
// how much of the packet "len" may see, so the largest frame will do.
const Snaplen = 65535

// Filter is a compiled tcpdump expression.
type Filter struct {
	Expr string
	CBPF []bpf.Instruction
}

// Compile compiles expr for Ethernet frames, with tcpdump's semantics. An
// empty expression matches every packet.
func Compile(expr string) (*Filter, error) {
	return CompileLink(layers.LinkTypeEthernet, expr)
}

// CompileLink compiles expr for frames of another link type (offline
// captures: Linux SLL, raw IP).
func CompileLink(lt layers.LinkType, expr string) (*Filter, error) {
	expr = strings.TrimSpace(expr)
	raw, err := pcap.CompileBPFFilter(lt, Snaplen, expr)
	if err != nil {
		return nil, fmt.Errorf("filter %q: %w", expr, err)
	}
	f := &Filter{Expr: expr}
	for _, r := range raw {
		f.CBPF = append(f.CBPF, bpf.RawInstruction{Op: r.Code, Jt: r.Jt, Jf: r.Jf, K: r.K}.Disassemble())
	}
	return f, nil
}

// Match runs the filter on a frame in Go (offline use and tests), with the
// semantics of the kernel's classic BPF.
func (f *Filter) Match(frame []byte) (bool, error) {
	vm, err := bpf.NewVM(f.CBPF)
	if err != nil {
		return false, err
	}
	n, err := vm.Run(frame)
	return n > 0, err
}

// XDPFunction returns the filter as the body of an eBPF function taking an
// XDP context (R1) and returning nonzero in R0 for a match.
func (f *Filter) XDPFunction() (asm.Instructions, error) {
	body, err := cbpfc.ToEBPF(f.CBPF, cbpfc.EBPFOpts{
		PacketStart: asm.R2,
		PacketEnd:   asm.R3,
		Result:      asm.R0,
		ResultLabel: "filter_result",
		Working:     [4]asm.Register{asm.R4, asm.R5, asm.R6, asm.R7},
		LabelPrefix: "filter",
	})
	if err != nil {
		return nil, fmt.Errorf("filter %q: %w", f.Expr, err)
	}
	insns := asm.Instructions{
		// struct xdp_md: data at offset 0, data_end at 4.
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
	}
	insns = append(insns, body...)
	insns = append(insns, asm.Return().WithSymbol("filter_result"))
	return insns, nil
}

// XDPDispatch returns the body of an eBPF function taking an XDP context
// (R1) and a filter id (R2), returning nonzero in R0 when the filter with
// that id matches; an unknown id matches nothing. It is how several
// filters (the Filter bricks) live in one datapath function.
func XDPDispatch(filters map[uint32]*Filter) (asm.Instructions, error) {
	ids := make([]uint32, 0, len(filters))
	for id := range filters {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var head, bodies asm.Instructions
	for _, id := range ids {
		f := filters[id]
		entry := fmt.Sprintf("f%d_entry", id)
		result := fmt.Sprintf("f%d_result", id)
		body, err := cbpfc.ToEBPF(f.CBPF, cbpfc.EBPFOpts{
			PacketStart: asm.R2,
			PacketEnd:   asm.R3,
			Result:      asm.R0,
			ResultLabel: result,
			Working:     [4]asm.Register{asm.R4, asm.R5, asm.R6, asm.R7},
			LabelPrefix: fmt.Sprintf("f%d_", id),
		})
		if err != nil {
			return nil, fmt.Errorf("filter %q: %w", f.Expr, err)
		}
		head = append(head, asm.JEq.Imm(asm.R2, int32(id), entry))
		bodies = append(bodies,
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word).WithSymbol(entry),
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word))
		bodies = append(bodies, body...)
		bodies = append(bodies, asm.Return().WithSymbol(result))
	}
	head = append(head, asm.Mov.Imm(asm.R0, 0), asm.Return())
	return append(head, bodies...), nil
}

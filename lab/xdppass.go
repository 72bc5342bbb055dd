package lab

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attachXDPPass attaches a program that passes everything to link l.
//
// Why: a veth that sends XDP_TX frames flushes its peer's queue only when
// the peer has an XDP program of its own (GRO alone is not enough, unlike
// for XDP_REDIRECT); without one, one-arm traffic waits in the ring until
// other traffic wakes the peer. Attached through netlink so it stays after
// this process exits and goes away with the namespace.
func attachXDPPass(nsName, ifname string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
	})
	if err != nil {
		return fmt.Errorf("XDP pass program: %w", err)
	}
	defer prog.Close()
	// netlink has no per-namespace XDP setter: run the call inside it.
	return doInNS(nsName, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
			return fmt.Errorf("attaching XDP pass to %s: %w", ifname, err)
		}
		return nil
	})
}

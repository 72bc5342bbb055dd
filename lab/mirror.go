package lab

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// Mirror copies every packet iface of host receives and sends to port (a
// switch's mirror/SPAN port), with tc (TCX) programs calling
// bpf_clone_redirect: the kernel has no act_mirred-free way that needs less.
// The returned function removes the mirror; the namespace's removal does too.
func (l *Lab) Mirror(host, iface, port string) (func(), error) {
	var links []link.Link
	closeAll := func() {
		for _, lk := range links {
			lk.Close()
		}
	}
	err := l.Do(host, func() error {
		src, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		dst, err := netlink.LinkByName(port)
		if err != nil {
			return err
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:    ebpf.SchedCLS,
			License: "GPL",
			Instructions: asm.Instructions{
				// bpf_clone_redirect(skb, port, 0): a copy out of port's egress.
				asm.Mov.Imm(asm.R2, int32(dst.Attrs().Index)),
				asm.Mov.Imm(asm.R3, 0),
				asm.FnCloneRedirect.Call(),
				asm.Mov.Imm(asm.R0, -1), // TCX_NEXT: the original goes on
				asm.Return(),
			},
		})
		if err != nil {
			return fmt.Errorf("mirror program: %w", err)
		}
		defer prog.Close()
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			lk, err := link.AttachTCX(link.TCXOptions{Interface: src.Attrs().Index, Program: prog, Attach: at})
			if err != nil {
				return fmt.Errorf("mirroring %s to %s: %w", iface, port, err)
			}
			links = append(links, lk)
		}
		return nil
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	return closeAll, nil
}

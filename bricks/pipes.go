package bricks

import (
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnsurePipe makes output pipe name (IF}N) exist: a veth pair whose end
// PipeHost(name) (IF{N) the engine sends into and whose end name a tool
// opens. made reports whether it was created now. An existing pair is used
// as it is; half of one is an error.
func EnsurePipe(name string) (made bool, err error) {
	host := PipeHost(name)
	_, errTool := netlink.LinkByName(name)
	_, errHost := netlink.LinkByName(host)
	switch {
	case errTool == nil && errHost == nil:
		return false, nil
	case errTool == nil || errHost == nil:
		return false, fmt.Errorf("output %s: %s exists without %s; remove it or name another output", name, map[bool]string{true: name, false: host}[errTool == nil], map[bool]string{true: host, false: name}[errTool == nil])
	}
	la := netlink.NewLinkAttrs()
	la.Name = host
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: name}); err != nil {
		return false, fmt.Errorf("creating output pipe %s: %w", name, err)
	}
	if err := setupPipe(host, name); err != nil {
		_ = DeletePipe(name)
		return false, fmt.Errorf("output pipe %s: %w", name, err)
	}
	return true, nil
}

func setupPipe(host, tool string) error {
	for _, n := range []string{host, tool} {
		// No IPv6 autoconfiguration: the kernel's own router solicitations
		// and MLD reports would show up in the tool's capture.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+n+"/disable_ipv6", []byte("1"), 0o644); err != nil && !os.IsNotExist(err) {
			return err
		}
		l, err := netlink.LinkByName(n)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	// XDP_REDIRECT into a veth needs NAPI on its peer: an XDP program there
	// turns it on (platform notes). It passes everything to the tool.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("XDP pass program: %w", err)
	}
	defer prog.Close()
	l, err := netlink.LinkByName(tool)
	if err != nil {
		return err
	}
	return netlink.LinkSetXdpFdWithFlags(l, prog.FD(), unix.XDP_FLAGS_DRV_MODE)
}

// DeletePipe removes a pipe EnsurePipe created.
func DeletePipe(name string) error {
	l, err := netlink.LinkByName(PipeHost(name))
	if err != nil {
		return nil
	}
	return netlink.LinkDel(l)
}

package xdp

import (
	"testing"

	"github.com/cilium/ebpf"
)

// TestVerifierBudget keeps the datapath well inside the verifier's limit
// of 1M processed instructions per program: at 847k (before the global
// functions of docs/architecture.md) the next feature would not have
// loaded. Raise the bound only with a reason.
func TestVerifierBudget(t *testing.T) {
	b := loadSmall(t)
	for name, prog := range map[string]interface {
		Info() (*ebpf.ProgramInfo, error)
	}{"mbx_xdp": b.objs.MbxXdp, "mbx_lb6": b.objs.MbxLb6, "mbx_bricks": b.objs.MbxBricks, "mbx_monitor_reinject": b.objs.MbxMonitorReinject} {
		info, err := prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		n, ok := info.VerifiedInstructions()
		if !ok {
			t.Skip("the kernel does not report verified instructions")
		}
		t.Logf("%s: %d verified instructions", name, n)
		if n > 500000 {
			t.Errorf("%s needs %d verified instructions; keep it under 500k (the limit is 1M): move rare paths into global functions", name, n)
		}
	}
}

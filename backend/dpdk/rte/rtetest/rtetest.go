//go:build dpdk

// Package rtetest is what tests of DPDK code share: an EAL without
// hugepages, PCI or files, and started ports.
package rtetest

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/mbx-net/mbx/backend/dpdk/rte"
)

// Main runs a test binary's tests with the EAL up and the given vdevs (the
// EAL runs once per process). Without root it skips everything.
func Main(m *testing.M, vdevs ...string) {
	if os.Getuid() != 0 {
		fmt.Println("skipping: DPDK's EAL needs root")
		os.Exit(0)
	}
	args := []string{"-l", "0", "--no-huge", "--no-pci", "-m", "256", "--no-shconf", "--no-telemetry",
		"--log-level", "lib.eal:error"}
	for _, v := range vdevs {
		args = append(args, "--vdev="+v)
	}
	if err := rte.Init(args); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	code := m.Run()
	rte.Cleanup()
	os.Exit(code)
}

// Ports starts one queue pair of ndesc descriptors on each named port,
// receiving into a new pool of n buffers; they stop when the test ends.
func Ports(tb testing.TB, n, ndesc int, names ...string) ([]rte.Port, *rte.Mempool) {
	tb.Helper()
	mp, err := rte.NewMempool(fmt.Sprintf("t%d", pools.Add(1)), n)
	if err != nil {
		tb.Fatal(err)
	}
	var ports []rte.Port
	for _, name := range names {
		p, err := rte.PortByName(name)
		if err != nil {
			tb.Fatal(err)
		}
		if err := p.Setup(1, 1, ndesc, mp); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(p.Stop)
		ports = append(ports, p)
	}
	return ports, mp
}

// pools names each pool (DPDK pool names are process-wide).
var pools atomic.Int32

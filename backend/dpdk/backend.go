//go:build dpdk

package dpdk

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/backend/dpdk/datapath"
	"github.com/mbx-net/mbx/backend/dpdk/rte"
	"github.com/mbx-net/mbx/lb"
)

func init() { backend.Register("dpdk", Open) }

// idleSpins empty polls in a row make an idle worker sleep idleSleep:
// on a machine where the kernel's softirq shares the core (AF_XDP and
// AF_PACKET vdevs over veth), a worker that never sleeps starves the very
// path that feeds it. MBX_DPDK_IDLE_SLEEP=0s spins (a dedicated core).
const idleSpins = 8

// idleSleep is how long an idle worker sleeps.
var idleSleep = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("MBX_DPDK_IDLE_SLEEP")); err == nil {
		return d
	}
	return 50 * time.Microsecond
}()

// Backend is the DPDK data plane: the EAL, its ports, and a polling
// worker per lcore of the EAL's -l list, each with a queue of every port
// and a Go datapath of its own.
type Backend struct {
	opts    backend.Options
	names   []string
	ports   []rte.Port
	mp      *rte.Mempool
	workers []*lane
	stop    chan struct{}
	done    sync.WaitGroup
	taps    []rte.Port // the exception path's TAP ports (--tap)
	has6    bool       // a port has an IPv6 address
	// A previous process's connections (save.go), put back by the first
	// Apply; adopted is how many entries its file held.
	saved   *savedState
	adopted int
}

// lane is one worker, its datapath, the CPU it polls on, and the lock the
// control plane takes between its rounds.
type lane struct {
	mu  sync.Mutex
	dp  *datapath.Datapath
	w   *Worker
	cpu int
}

// each runs fn on every worker's datapath, between its rounds.
func (b *Backend) each(fn func(l *lane)) {
	for _, l := range b.workers {
		l.mu.Lock()
		fn(l)
		l.mu.Unlock()
	}
}

// portSpec is a DPDK device and the port's addresses (one --port each:
// repeat it for an IPv6 address beside the IPv4 one).
type portSpec struct {
	name     string
	prefixes []netip.Prefix
}

// parsePort reads NAME=ADDR/LEN, or NAME alone: a port without an address
// (an inline monitor's, which forwards without answering for anything).
func parsePort(s string) (name string, pf netip.Prefix, err error) {
	name, addr, hasAddr := strings.Cut(s, "=")
	if hasAddr {
		pf, err = netip.ParsePrefix(addr)
	}
	if name == "" || err != nil || strings.ContainsAny(name, " /") {
		return "", pf, fmt.Errorf("--port %q: give NAME=A.B.C.D/LEN (or an IPv6 ADDR/LEN), the DPDK device and the port's address (e.g. net_af_xdp0=198.18.0.1/24), or NAME alone for a port without one", s)
	}
	return name, pf, nil
}

// parsePorts groups --port flags by device, in their order.
func parsePorts(flags []string) ([]portSpec, error) {
	var specs []portSpec
	for _, f := range flags {
		name, pf, err := parsePort(f)
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(specs, func(s portSpec) bool { return s.name == name })
		if i < 0 {
			specs = append(specs, portSpec{name: name})
			i = len(specs) - 1
		}
		if pf.IsValid() {
			specs[i].prefixes = append(specs[i].prefixes, pf)
		}
	}
	return specs, nil
}

// Open starts the EAL, configures and starts the ports, and runs the
// worker. Every failure names what to fix.
func Open(opts backend.Options) (backend.Backend, error) {
	if len(opts.Ports) == 0 {
		return nil, errors.New("the dpdk backend needs --port NAME=A.B.C.D/LEN (one per DPDK port)")
	}
	if len(opts.EAL) == 0 {
		return nil, errors.New(`the dpdk backend needs --eal "ARGS" (e.g. "-l 0 --no-huge --no-pci -m 512 --vdev=net_af_xdp0,iface=eth0")`)
	}
	if len(opts.Ifaces) > 0 {
		return nil, errors.New("--iface is for the xdp backend: DPDK ports are given with --port")
	}
	specs, err := parsePorts(opts.Ports)
	if err != nil {
		return nil, err
	}
	eal := append([]string(nil), opts.EAL...)
	if !hasArg(eal, "--no-shconf") && !hasArg(eal, "--file-prefix") {
		eal = append(eal, "--no-shconf") // no runtime files to leave behind
	}
	if !hasArg(eal, "--no-telemetry") {
		eal = append(eal, "--no-telemetry")
	}
	if err := rte.Init(eal); err != nil {
		hint := ""
		if strings.Contains(err.Error(), "ermission") || strings.Contains(err.Error(), "hugepage") {
			hint = " (without hugepages, add --no-huge -m 512 to --eal)"
		}
		return nil, fmt.Errorf("%w%s", err, hint)
	}
	b := &Backend{opts: opts, stop: make(chan struct{})}
	cpus := rte.LcoreCPUs()
	fail := func(err error) (backend.Backend, error) {
		for _, p := range append(b.taps, b.ports...) {
			p.Stop()
			p.Close()
		}
		rte.Cleanup()
		return nil, err
	}
	if b.mp, err = rte.NewMempool("mbx", 16383); err != nil {
		return fail(err)
	}
	var dports []datapath.Port
	for i, s := range specs {
		p, err := rte.PortByName(s.name)
		if err != nil {
			return fail(err)
		}
		// A pool per port and queue: an AF_XDP queue's UMEM is its
		// pool's memory. Without hugepages, buffers one 4 KB page each:
		// AF_XDP drops those that cross a page (rte.NewMempoolTiled).
		var pools []*rte.Mempool
		for q := range cpus {
			name := fmt.Sprintf("mbx_rx%d_%d", i, q)
			var pool *rte.Mempool
			if hasArg(eal, "--no-huge") {
				pool, err = rte.NewMempoolTiled(name, 16383)
			} else {
				pool, err = rte.NewMempool(name, 16383)
			}
			if err != nil {
				return fail(err)
			}
			pools = append(pools, pool)
		}
		if err := p.SetupQueues(len(cpus), len(cpus), 4096, pools); err != nil {
			if len(cpus) > 1 {
				err = fmt.Errorf("%w (a worker per lcore of -l needs %d queues: e.g. qpairs=%d for net_af_packet, queue_count=%d for net_af_xdp)",
					err, len(cpus), len(cpus), len(cpus))
			}
			return fail(err)
		}
		b.ports = append(b.ports, p)
		b.names = append(b.names, s.name)
		mac, err := p.MAC()
		if err != nil {
			return fail(err)
		}
		dp := datapath.Port{Name: s.name, MAC: mac, MTU: p.MTU()}
		for _, pf := range s.prefixes {
			dp.Prefixes = append(dp.Prefixes, pf.Masked())
			dp.Addrs = append(dp.Addrs, pf.Addr())
		}
		dports = append(dports, dp)
		for _, a := range dp.Addrs {
			b.has6 = b.has6 || a.Is6()
		}
	}
	// Each worker's table holds its share of the connections.
	connMax := opts.ConnMax
	if connMax > 0 {
		connMax = (connMax + len(cpus) - 1) / len(cpus)
	}
	shared := datapath.NewShared()
	var workers []*Worker
	for q, cpu := range cpus {
		dp, err := datapath.New(dports, datapath.Options{ARP: true, Timeouts: opts.Timeouts, PortLo: opts.PortLo,
			PortHi: opts.PortHi, HashSeed: opts.HashSeed, ConnMax: connMax, TunnelSrc: opts.TunnelSrc,
			Workers: len(cpus), Worker: q, Shared: shared})
		if err != nil {
			return fail(err)
		}
		for _, r := range opts.Routes {
			dst, via, _ := strings.Cut(r, "=")
			pf, err1 := netip.ParsePrefix(dst)
			gw, err2 := netip.ParseAddr(via)
			if err1 != nil || err2 != nil {
				return fail(fmt.Errorf("--route %q: give DST/LEN=GATEWAY (e.g. 198.18.5.0/24=198.18.1.254)", r))
			}
			if err := dp.AddRoute(pf, gw); err != nil {
				return fail(fmt.Errorf("--route %q: %w", r, err))
			}
		}
		w := NewWorker(b.ports, q, dp, 32, b.mp)
		workers = append(workers, w)
		b.workers = append(b.workers, &lane{dp: dp, w: w, cpu: cpu})
	}
	Connect(workers)
	for _, t := range opts.Taps {
		if err := b.addTap(t, specs); err != nil {
			for _, w := range workers {
				w.Close()
			}
			return fail(err)
		}
	}
	if err := b.loadState(); err != nil {
		for _, w := range workers {
			w.Close()
		}
		return fail(err)
	}
	for _, l := range b.workers {
		b.done.Add(1)
		go b.run(l)
	}
	return b, nil
}

// addTap makes a kernel TAP interface the exception path of a port
// (--tap PORT=IFNAME), as DPVS's KNI: DPDK's net_tap with the port's MAC,
// and the port's address on it, so the kernel answers what mbx leaves to
// it (ssh to the node, a routing daemon) and its replies leave through
// the port.
func (b *Backend) addTap(spec string, specs []portSpec) error {
	portName, ifname, _ := strings.Cut(spec, "=")
	i := slices.Index(b.names, portName)
	if i < 0 || ifname == "" || len(ifname) > 15 || strings.ContainsAny(ifname, ",/ ") {
		return fmt.Errorf("--tap %q: give PORT=IFNAME, a --port's device (%s) and a new interface name (at most 15 characters)",
			spec, strings.Join(b.names, ", "))
	}
	if _, err := netlink.LinkByName(ifname); err == nil {
		return fmt.Errorf("--tap %q: interface %s already exists", spec, ifname)
	}
	mac, err := b.ports[i].MAC()
	if err != nil {
		return err
	}
	tap, err := rte.AttachVdev(fmt.Sprintf("net_tap%d,iface=%s,mac=%s", i, ifname, mac))
	if err != nil {
		return fmt.Errorf("--tap %q: %w (the kernel needs /dev/net/tun)", spec, err)
	}
	b.taps = append(b.taps, tap)
	pool, err := rte.NewMempool(fmt.Sprintf("mbx_tap%d", i), 4095)
	if err != nil {
		return err
	}
	if err := tap.Setup(len(b.workers), len(b.workers), 1024, pool); err != nil {
		return fmt.Errorf("--tap %q: %w", spec, err)
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("--tap %q: %w", spec, err)
	}
	for _, p := range specs[i].prefixes {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("--tap %q: address %s: %w", spec, p, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("--tap %q: %w", spec, err)
	}
	for _, l := range b.workers {
		l.w.SetTap(i, tap)
	}
	return nil
}

func hasArg(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// run polls on an OS thread of its own, on its lcore's CPU, until Close.
// The control plane takes the lock between rounds.
func (b *Backend) run(l *lane) {
	runtime.LockOSThread()
	defer b.done.Done()
	var set unix.CPUSet
	set.Set(l.cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil && b.opts.Logger != nil {
		b.opts.Logger.Warn("dpdk worker: CPU affinity", "cpu", l.cpu, "err", err)
	}
	idle := 0
	for {
		select {
		case <-b.stop:
			return
		default:
		}
		l.mu.Lock()
		n := l.w.Poll()
		l.mu.Unlock()
		// A polling core spins; on a shared lab machine, yield when idle.
		if n == 0 && idleSleep > 0 {
			if idle++; idle > idleSpins {
				time.Sleep(idleSleep)
			}
		} else {
			idle = 0
		}
	}
}

// Apply is backend.Backend's: the datapath refuses, whole, what it does
// not run yet.
func (b *Backend) Apply(cfg *lb.Config) error {
	for _, s := range cfg.Services {
		if !s.Key.IsMatch() && s.Key.Addr.Is6() && !b.has6 {
			// Neighbour solicitations are answered from a port's IPv6
			// address, and real servers solicited from it.
			return fmt.Errorf("service %s: IPv6 needs an IPv6 address on the DPDK ports (--port NAME=ADDR/LEN, repeated)", s.Key)
		}
		for _, la := range s.LocalAddrs {
			if la.Dev != "" && !slices.Contains(b.names, la.Dev) {
				return fmt.Errorf("service %s: LIP %s on %s: not a DPDK port of this mbx (%s)", s.Key, la.Addr, la.Dev, strings.Join(b.names, ", "))
			}
		}
	}
	// The first datapath validates: the others, configured alike, then
	// take the same configuration without fail.
	var err error
	b.each(func(l *lane) {
		if err == nil {
			err = l.dp.Apply(cfg)
		}
	})
	if err == nil && b.saved != nil && len(cfg.Services) > 0 {
		b.restore()
	}
	return err
}

// Snapshot reads the datapath's counters, per real server and per service.
func (b *Backend) Snapshot() (*backend.Snapshot, error) {
	s := &backend.Snapshot{Services: map[lb.ServiceKey]backend.Counters{}, Reals: map[backend.RealRef]backend.RealStatus{},
		Laddrs: map[backend.LaddrRef]backend.LaddrStatus{}, Datapath: map[string]uint64{}, Ifaces: map[string]backend.Verdicts{},
		ConnsMax: b.opts.ConnMax, LocalPorts: int(b.opts.PortHi) - int(b.opts.PortLo) + 1}
	b.each(func(l *lane) {
		for k, v := range l.dp.Counters() {
			s.Datapath[k] += v
		}
		s.Entries += l.dp.Conns()
		// Packets received by one worker and forwarded by their owner.
		s.Datapath["handed_off"] += l.w.Handed
		s.Datapath["drop_handoff"] += l.w.HandDropped
		w := l.w
		s.Workers = append(s.Workers, backend.WorkerCounters{Worker: len(s.Workers), CPU: l.cpu, Rx: w.Rx, Handed: w.Handed,
			Taken: w.Taken, HandDropped: w.HandDropped, TxDropped: w.TxDropped, ToKernel: w.ToKernel, FromKernel: w.FromKernel})
		l.dp.RealCounters(func(svc lb.ServiceKey, real netip.AddrPort, st backend.RealStatus) {
			ref := backend.RealRef{Service: svc, Real: real}
			r := s.Reals[ref]
			r.Counters.Add(st.Counters)
			r.Active += st.Active
			r.Inactive += st.Inactive
			s.Reals[ref] = r
			sc := s.Services[svc]
			sc.Add(st.Counters)
			s.Services[svc] = sc
		})
	})
	return s, nil
}

// Conns lists live connections.
func (b *Backend) Conns(limit int) ([]backend.Conn, error) {
	var out []backend.Conn
	b.each(func(l *lane) {
		if limit > 0 && len(out) >= limit {
			return
		}
		l.dp.ConnList(limit-len(out), func(c backend.Conn) { out = append(out, c) })
	})
	return out, nil
}

// Close stops the workers and the ports and releases the EAL.
func (b *Backend) Close() error {
	if !b.halt() {
		return nil
	}
	b.release()
	return nil
}

// halt stops the workers; false when they were stopped already.
func (b *Backend) halt() bool {
	select {
	case <-b.stop:
		return false
	default:
	}
	close(b.stop)
	b.done.Wait()
	return true
}

// release closes the ports and the EAL (after halt).
func (b *Backend) release() {
	for i, l := range b.workers {
		if b.opts.Logger != nil {
			w := l.w
			b.opts.Logger.Info("dpdk worker", "worker", i, "cpu", l.cpu, "rx", w.Rx, "handed", w.Handed,
				"taken", w.Taken, "hand_dropped", w.HandDropped, "tx_dropped", w.TxDropped, "to_kernel", w.ToKernel,
				"from_kernel", w.FromKernel)
		}
	}
	for _, t := range b.taps {
		t.Stop()
		t.Close() // the kernel interface goes with it
	}
	for _, l := range b.workers {
		l.w.Close()
	}
	for i, p := range b.ports {
		if st, err := p.Stats(); err == nil && b.opts.Logger != nil {
			b.opts.Logger.Info("dpdk port", "port", b.names[i], "rx", st.InPackets, "tx", st.OutPackets,
				"rx_missed", st.InMissed, "rx_errors", st.InErrors, "tx_errors", st.OutErrors, "rx_nombuf", st.NoMbuf)
		}
		p.Stop()
		p.Close()
	}
	rte.Cleanup()
}

// Handover stops forwarding and saves the connections, persistence and
// neighbours for the next mbx run (save.go), then releases the ports.
func (b *Backend) Handover() error {
	if !b.halt() {
		return errors.New("the dpdk backend is stopped already")
	}
	err := b.saveState()
	b.release()
	return err
}

// OwnsAddresses is backend.AddressOwner's: DPDK owns the ports, the
// datapath answers ARP for VIPs and LIPs.
func (b *Backend) OwnsAddresses() bool { return true }

// Adopted is how many connection entries a previous run left (at least 1
// when it left a state file): the daemon then restores its configuration.
func (b *Backend) Adopted() int { return b.adopted }

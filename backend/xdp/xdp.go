// Package xdp is the default backend: one XDP program (bpf/mbx.c) attached
// to every interface, its state in BPF maps written from the desired state.
package xdp

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
)

const (
	maxServices = 4096
	maxReals    = 16384
	maxLaddrs   = 4096
	schedSlots  = 1 << 22 // 8 MiB; room for ~30 Maglev services of 65537 slots and their swap
	// slotsPerGroup real ids share one sched_slots element (see consts.h);
	// a service's table starts on a group boundary.
	slotsPerGroup = 4
	// sched_bytes: BYTES_PER_GROUP one-byte slots per element, for services
	// of at most maxByteReals real servers (SVC_F_BYTES in consts.h).
	bytesPerGroup  = 8
	maxByteReals   = 255
	svcFBytes      = 16
	svcFNibbles    = 32 // at most maxNibbleReals: half a byte per slot
	maxNibbleReals = 15
	svcNRealsShift = 16
	ifSlots        = 256 // IF_SLOTS in maps.h
)

func init() {
	backend.Register("xdp", func(o backend.Options) (backend.Backend, error) { return Open(o) })
}

// Backend is the XDP data plane.
type Backend struct {
	opts  backend.Options
	log   *slog.Logger
	objs  mbxObjects
	links []link.Link

	mu       sync.Mutex
	services map[lb.ServiceKey]*progService
	locals   map[mbxLocalKey]uint32
	local6   local6Table // Go's copy of the datapath's local6 (local6.go)
	svcIDs   idAlloc
	realIDs  idAlloc
	slots    *rangeAlloc
	bytes    *rangeAlloc // sched_bytes groups
	laddrIdx *rangeAlloc
	pending  []func() // releases deferred to the next Apply (readers may still use them)
	retired  map[lb.ServiceKey]backend.Counters

	sysctls   []sysctlRestore
	fibGen    uint32
	baseTO    flow.Timeouts // from Options; the config's --set values apply on top
	fibDone   chan struct{}
	adopted   int
	created   map[link.Link]bool // links this run attached (not taken over)
	stop      chan struct{}
	done      chan struct{}
	sweep     sweepResult
	evict     evictEstimate
	brick     *brickState   // bricks.go; nil until ApplyBricks
	direct    []netip.Addr  // DR and tunnel real servers, whose next hops Go keeps resolved
	snatCount int           // SNAT rules written (config.snat_rules)
	lb6       uint32        // config.lb6: LB6_V6 | LB6_NAT64 for the services applied
	filtered  *ebpf.Program // mbx_xdp with the monitor's stream filter, while it runs (monitor.go)
	// filteredReinject: mbx_monitor_reinject with the same filter.
	filteredReinject *ebpf.Program
}

// LoadSpec returns the datapath's collection spec with mbx's settings.
func LoadSpec(connMax int) (*ebpf.CollectionSpec, error) {
	spec, err := loadMbx()
	if err != nil {
		return nil, err
	}
	if connMax > 0 {
		spec.Maps["conns"].MaxEntries = uint32(2 * connMax)
		// IPv6 flows get a table of their own, a quarter the size (its
		// entries are twice as large; most deployments are IPv4-heavy).
		spec.Maps["conns6"].MaxEntries = uint32(max(2*connMax/4, 1024))
	}
	return spec, nil
}

// Load loads the datapath into the kernel without attaching it (tests,
// benchmarks and Open use it).
func Load(opts backend.Options) (*Backend, error) {
	opts.Defaults()
	spec, err := LoadSpec(opts.ConnMax)
	if err != nil {
		return nil, err
	}
	b := &Backend{
		opts:     opts,
		log:      opts.Logger,
		services: map[lb.ServiceKey]*progService{},
		locals:   map[mbxLocalKey]uint32{},
		local6:   newLocal6Table(),
		svcIDs:   idAlloc{max: maxServices},
		realIDs:  idAlloc{max: maxReals},
		slots:    newRangeAlloc(schedSlots / slotsPerGroup),
		bytes:    newRangeAlloc(schedSlots / bytesPerGroup),
		laddrIdx: newRangeAlloc(maxLaddrs),
		retired:  map[lb.ServiceKey]backend.Counters{},
	}
	var copts *ebpf.CollectionOptions
	var oldConns6 *ebpf.Map // an older mbx's 40-byte-key conns6 (migrate6.go)
	if opts.PinDir != "" {
		if err := preparePins(spec, opts.PinDir, opts.Fresh); err != nil {
			return nil, err
		}
		copts = &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}
		if oldConns6, err = detachConns6v1(opts.PinDir); err != nil {
			return nil, err
		}
		if oldConns6 != nil {
			defer func() {
				// A load that fails gives the old datapath its table back.
				path := filepath.Join(opts.PinDir, "conns6")
				if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
					_ = oldConns6.Pin(path)
				}
				oldConns6.Close()
			}()
		}
	}
	if err := spec.LoadAndAssign(&b.objs, copts); err != nil {
		var ve *ebpf.VerifierError
		if errors.Is(err, os.ErrPermission) && !errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the XDP datapath: %w (mbx needs root or CAP_BPF+CAP_NET_ADMIN)", err)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("state pinned in %s does not fit this mbx or --conn-max: %w; start with --fresh to discard it (drops its connections)", opts.PinDir, err)
		}
		return nil, fmt.Errorf("loading the XDP datapath: %w", err)
	}
	if opts.PinDir != "" {
		n, err := b.adopt()
		if err == nil {
			err = b.readLocal6()
		}
		if err != nil {
			b.objs.Close()
			return nil, fmt.Errorf("reading pinned state in %s: %w", opts.PinDir, err)
		}
		b.adopted = n
	}
	b.baseTO = opts.Timeouts
	if err := b.writeConfig(); err != nil {
		b.objs.Close()
		return nil, err
	}
	if oldConns6 != nil {
		// Last before the switch: the old datapath fills it until then.
		moved, lost, err := b.migrateConns6(oldConns6)
		if err != nil {
			b.objs.Close()
			return nil, fmt.Errorf("carrying IPv6 connections over to the new conns6: %w", err)
		}
		b.log.Info("IPv6 connection table converted to the 24-byte key", "carried", moved, "lost", lost)
	}
	// After the config: a pinned lb6_prog is also the running datapath's,
	// which must not meet this program before its config is written.
	if err := b.objs.Lb6Prog.Put(uint32(0), b.objs.MbxLb6); err != nil {
		b.objs.Close()
		return nil, fmt.Errorf("lb6_prog: %w", err)
	}
	return b, nil
}

func (b *Backend) writeConfig() error {
	var c mbxConfig
	c.PortLo, c.PortHi = b.opts.PortLo, b.opts.PortHi
	c.HashSeed = b.opts.HashSeed
	c.FibGen = b.fibGen
	c.FibMaxAge = uint32(fibMaxAge.Nanoseconds() >> 20)
	c.TunSrcBase, c.TunSrcMask = tunnelSrc(b.opts.TunnelSrc)
	c.SnatRules = uint32(b.snatCount)
	c.Lb6 = b.lb6
	for i, d := range b.opts.Timeouts {
		c.TimeoutNs[i] = uint64(d)
	}
	fsm := flow.IPVSFSM()
	for d := range fsm {
		for e := range fsm[d] {
			for s := range fsm[d][e] {
				c.Fsm[d][e][s] = uint8(fsm[d][e][s])
			}
		}
	}
	if err := b.objs.ConfigMap.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("writing datapath config: %w", err)
	}
	return nil
}

// AddTxPort makes ifindex a target of XDP_REDIRECT (Open does it for every
// attached interface; tests and benchmarks that only Load call it).
func (b *Backend) AddTxPort(ifindex int) error {
	return b.objs.TxPorts.Put(uint32(ifindex), uint32(ifindex))
}

// Program is the XDP entry program (for tests and benchmarks).
func (b *Backend) Program() *ebpf.Program { return b.objs.MbxXdp }

// Open loads the datapath and attaches it to opts.Ifaces. On error nothing
// stays attached.
func Open(opts backend.Options) (*Backend, error) {
	opts.Defaults()
	if len(opts.Ifaces) == 0 {
		return nil, errors.New("no interface given (--iface IF)")
	}
	var flags link.XDPAttachFlags
	switch opts.XDPMode {
	case "native":
		flags = link.XDPDriverMode
	case "generic":
		flags = link.XDPGenericMode
		opts.Logger.Warn("XDP generic mode: packets are copied into skbs first; use only where the driver lacks native XDP")
	default:
		return nil, fmt.Errorf("unknown --xdp-mode %q (native or generic)", opts.XDPMode)
	}
	// Check every interface before loading anything.
	var lks []netlink.Link
	for _, name := range opts.Ifaces {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", name, err)
		}
		if pl, err := pinnedLink(opts.PinDir, name); err != nil {
			return nil, fmt.Errorf("pinned link for %s: %w", name, err)
		} else if pl != nil {
			pl.Close() // ours, from a previous run: taken over below
		} else if x := l.Attrs().Xdp; x != nil && x.Attached {
			return nil, fmt.Errorf("interface %s already has an XDP program (id %d); remove it first (ip link set dev %s xdp off)", name, x.ProgId, name)
		}
		lks = append(lks, l)
	}
	b, err := Load(opts)
	if err != nil {
		return nil, err
	}
	slotOwner := map[int]string{}
	for _, l := range lks {
		slot := l.Attrs().Index % ifSlots
		if other, ok := slotOwner[slot]; ok {
			b.log.Warn("interfaces share a verdict-counter slot; their per-interface verdict metrics are approximate", "iface", l.Attrs().Name, "other", other)
		}
		slotOwner[slot] = l.Attrs().Name
	}
	for _, l := range lks {
		lk, err := b.attach(l.Attrs().Name, l.Attrs().Index, flags)
		if err != nil {
			b.abort()
			return nil, err
		}
		b.links = append(b.links, lk)
		if err := b.AddTxPort(l.Attrs().Index); err != nil {
			b.abort()
			return nil, fmt.Errorf("adding %s to the redirect map: %w", l.Attrs().Name, err)
		}
	}
	if err := b.setSysctls(); err != nil {
		b.abort()
		return nil, err
	}
	if err := b.watchFIB(); err != nil {
		b.abort()
		return nil, err
	}
	b.startSweeper()
	return b, nil
}

// attach puts the program on an interface: by swapping it into the link a
// previous run pinned (atomic: packets never miss a program), or by
// attaching anew (and pinning the link when state is pinned).
func (b *Backend) attach(name string, ifindex int, flags link.XDPAttachFlags) (link.Link, error) {
	if pl, err := pinnedLink(b.opts.PinDir, name); err != nil {
		return nil, err
	} else if pl != nil {
		if err := pl.Update(b.objs.MbxXdp); err != nil {
			pl.Close()
			return nil, fmt.Errorf("taking over the XDP link on %s: %w", name, err)
		}
		b.log.Info("took over the running datapath", "iface", name)
		return pl, nil
	}
	lk, err := link.AttachXDP(link.XDPOptions{Program: b.objs.MbxXdp, Interface: ifindex, Flags: flags})
	if err != nil {
		return nil, fmt.Errorf("attaching XDP (%s mode) to %s: %w", b.opts.XDPMode, name, err)
	}
	if b.opts.PinDir != "" {
		if err := lk.Pin(linkPin(b.opts.PinDir, name)); err != nil {
			lk.Close()
			return nil, fmt.Errorf("pinning the XDP link of %s: %w", name, err)
		}
	}
	if b.created == nil {
		b.created = map[link.Link]bool{}
	}
	b.created[lk] = true
	return lk, nil
}

// abort undoes a failed Open without touching what a previous run left
// running: links it created are detached, taken-over links and pinned state
// stay as they were.
func (b *Backend) abort() {
	if b.opts.PinDir == "" || (b.adopted == 0 && len(b.created) == len(b.links)) {
		b.Close()
		return
	}
	b.stopWorkers()
	b.closeBricks()
	for _, l := range b.links {
		if b.created[l] {
			_ = l.Unpin()
		}
		l.Close()
	}
	b.links = nil
	b.restoreSysctls()
	b.objs.Close()
}

// Adopted is how many services a previous run left running in the pinned state.
func (b *Backend) Adopted() int { return b.adopted }

// Handover releases this process's hold but leaves the pinned links
// attached and the pinned maps in place: packets keep flowing and the next
// `mbx run` takes over. Without pinning it is Close.
func (b *Backend) Handover() error {
	if b.opts.PinDir == "" {
		return b.Close()
	}
	b.stopWorkers()
	b.closeBricks()
	var errs []error
	for _, l := range b.links {
		errs = append(errs, l.Close()) // the pin keeps the program attached
	}
	b.links = nil
	b.sysctls = nil // accept_local stays: the datapath still relies on it
	errs = append(errs, b.objs.Close())
	return errors.Join(errs...)
}

func (b *Backend) stopWorkers() {
	if b.stop != nil {
		close(b.stop)
		<-b.done
		b.stop = nil
	}
	if b.fibDone != nil {
		close(b.fibDone)
		b.fibDone = nil
	}
}

// Close detaches and releases everything (safe to call on a partial Open),
// including state pinned for restarts.
func (b *Backend) Close() error {
	b.stopWorkers()
	b.closeBricks()
	var errs []error
	for _, l := range b.links {
		if b.opts.PinDir != "" {
			errs = append(errs, l.Unpin())
		}
		errs = append(errs, l.Close())
	}
	b.links = nil
	b.restoreSysctls()
	errs = append(errs, b.objs.Close())
	if b.opts.PinDir != "" {
		errs = append(errs, os.RemoveAll(b.opts.PinDir))
	}
	return errors.Join(errs...)
}

// sysctls: fib lookups need forwarding on (IPv4 and IPv6); handing a rewritten packet to the
// kernel (unresolved neighbour) needs accept_local, since its source (a LIP or
// VIP) is one of ours. accept_local is per interface and restored on Close;
// ip_forward is node-wide and left on (another instance in the namespace may
// rely on it, and a load balancer node forwards anyway).
type sysctlRestore struct{ path, old string }

func (b *Backend) setSysctls() error {
	set := func(path, val string, restore bool) error {
		old, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
		if strings.TrimSpace(string(old)) == val {
			return nil
		}
		if err := os.WriteFile(path, []byte(val), 0o644); err != nil {
			return fmt.Errorf("setting %s: %w", path, err)
		}
		b.log.Info("set sysctl", "path", path, "value", val, "was", strings.TrimSpace(string(old)), "restored_on_exit", restore)
		if restore {
			b.sysctls = append(b.sysctls, sysctlRestore{path, strings.TrimSpace(string(old))})
		}
		return nil
	}
	if err := set("/proc/sys/net/ipv4/ip_forward", "1", false); err != nil {
		return err
	}
	// IPv6 fib lookups need it too (and the kernel then acts as an IPv6
	// router: it ignores router advertisements unless accept_ra is 2).
	if _, err := os.Stat("/proc/sys/net/ipv6/conf/all/forwarding"); err == nil {
		if err := set("/proc/sys/net/ipv6/conf/all/forwarding", "1", false); err != nil {
			return err
		}
	}
	for _, ifc := range b.opts.Ifaces {
		if err := set("/proc/sys/net/ipv4/conf/"+ifc+"/accept_local", "1", true); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) restoreSysctls() {
	for i := len(b.sysctls) - 1; i >= 0; i-- {
		s := b.sysctls[i]
		_ = os.WriteFile(s.path, []byte(s.old), 0o644)
	}
	b.sysctls = nil
}

// monoNow is the clock bpf_ktime_get_coarse_ns reads.
func monoNow() uint64 {
	var ts timespec
	clockGettimeCoarse(&ts)
	return uint64(ts.Sec)*uint64(time.Second) + uint64(ts.Nsec)
}

func addrWords(a netip.Addr) [4]uint32 { return flow.AddrWords(a) }

func wordsAddr(w [4]uint32, family uint8) netip.Addr {
	var b [16]byte
	for i, x := range w {
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
	}
	if family == 2 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func htons(p uint16) uint16 { return p<<8 | p>>8 }

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return 2
	}
	return 10
}

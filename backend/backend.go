// Package backend defines what a data plane does for mbx and keeps the
// registry of data planes (CoreDNS-style: each backend registers itself).
// A backend moves packets and programs its data plane from the desired
// state; it never makes service or scheduling decisions of its own.
package backend

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"time"

	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/filter"
	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
	"github.com/mbx-net/mbx/monitor"
)

// Options configure a backend when it starts.
type Options struct {
	Ifaces   []string      // interfaces to attach to
	XDPMode  string        // "native" (default) or "generic" (XDP only)
	ConnMax  int           // connections the table holds (two entries each)
	Timeouts flow.Timeouts // idle timeout per state
	PortLo   uint16        // Full-NAT local port range
	PortHi   uint16
	HashSeed uint32 // flow hash seed; equal on every node of a cluster
	PinDir   string // keep state (and the attachment) here across restarts; "" = none
	// TunnelSrc, when set, is where tunnel (-i) outer source addresses come
	// from: one per flow, so receivers' RSS spreads flows. Unset: the egress
	// interface's address.
	TunnelSrc netip.Prefix
	Fresh     bool // discard state a previous run left in PinDir
	Logger    *slog.Logger
	// DPDK backend: the EAL's arguments, and the ports mbx runs on, each
	// "NAME=A.B.C.D/LEN" (a DPDK device name, the port's own address and
	// connected network).
	EAL   []string
	Ports []string
	// Routes are the DPDK backend's static routes, each "DST/LEN=GATEWAY"
	// (DPDK owns its ports: the kernel's routes do not apply).
	Routes []string
	// Taps are the DPDK backend's exception path, each "PORT=IFNAME": a
	// kernel TAP interface IFNAME with PORT's MAC and address gets what
	// the datapath leaves to the kernel, and what the kernel sends there
	// leaves through PORT (DPVS's KNI).
	Taps []string
}

// Defaults fills zero fields with mbx's defaults.
func (o *Options) Defaults() {
	if o.ConnMax == 0 {
		o.ConnMax = 1 << 20
	}
	if o.Timeouts == (flow.Timeouts{}) {
		o.Timeouts = flow.IPVSTimeouts()
	}
	if o.PortLo == 0 && o.PortHi == 0 {
		o.PortLo, o.PortHi = 1024, 65535
	}
	if o.XDPMode == "" {
		o.XDPMode = "native"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Backend is a running data plane.
type Backend interface {
	// Apply makes the data plane match cfg (already validated), touching only
	// what changed; established connections are never disturbed.
	Apply(cfg *lb.Config) error
	// Snapshot reads traffic counters and connection counts.
	Snapshot() (*Snapshot, error)
	// Conns lists up to limit connections (0: all).
	Conns(limit int) ([]Conn, error)
	// Close detaches from every interface and releases everything.
	Close() error
	// Handover exits leaving the data plane running with its state, for
	// the next start to take over (restart or upgrade without loss).
	Handover() error
	// Adopted is how many services a previous run left running.
	Adopted() int
}

// AddressOwner is a backend whose ports the kernel does not see (DPDK):
// it answers ARP for VIPs and LIPs itself, so the control plane puts no
// addresses on Linux devices for it.
type AddressOwner interface {
	OwnsAddresses() bool
}

// BrickPlane is a backend that runs brick engines (packet-bricks).
type BrickPlane interface {
	// ApplyBricks makes the data plane run plan: its engines, and no others.
	// A plan that cannot run changes nothing.
	ApplyBricks(plan *bricks.Plan) error
	// BrickStats reads each node's counters.
	BrickStats() (map[uint32]BrickCounters, error)
}

// BrickCounters are one brick's (or output's) counters.
type BrickCounters struct {
	Pkts    uint64 `json:"pkts"`
	Bytes   uint64 `json:"bytes"`
	Drops   uint64 `json:"drops"`   // sends that failed
	Skipped uint64 `json:"skipped"` // Filter: packets it did not match (left to the kernel)
}

// Counters are IPVS's per-service / per-real statistics.
type Counters struct {
	Conns    uint64 `json:"conns"`
	InPkts   uint64 `json:"inpkts"`
	OutPkts  uint64 `json:"outpkts"`
	InBytes  uint64 `json:"inbytes"`
	OutBytes uint64 `json:"outbytes"`
}

// Add accumulates o into c.
func (c *Counters) Add(o Counters) {
	c.Conns += o.Conns
	c.InPkts += o.InPkts
	c.OutPkts += o.OutPkts
	c.InBytes += o.InBytes
	c.OutBytes += o.OutBytes
}

// RealRef names a real server within a service.
type RealRef struct {
	Service lb.ServiceKey  `json:"service"`
	Real    netip.AddrPort `json:"real"`
}

// RealStatus is a real server's counters and current connections.
type RealStatus struct {
	Counters
	Active   uint64 `json:"active"`
	Inactive uint64 `json:"inactive"`
}

// LaddrRef names a LIP within a service.
type LaddrRef struct {
	Service lb.ServiceKey `json:"service"`
	Addr    netip.Addr    `json:"addr"`
}

// LaddrStatus is a LIP's usage.
type LaddrStatus struct {
	Conns     uint64 `json:"conns"`
	Conflicts uint64 `json:"conflicts"`
}

// Verdicts counts packets per XDP verdict (or the backend's equivalent).
type Verdicts struct {
	Aborted  uint64 `json:"aborted"`
	Drop     uint64 `json:"drop"`
	Pass     uint64 `json:"pass"`
	Tx       uint64 `json:"tx"`
	Redirect uint64 `json:"redirect"`
}

// Total is every packet counted.
func (v Verdicts) Total() uint64 { return v.Aborted + v.Drop + v.Pass + v.Tx + v.Redirect }

// Snapshot is a point-in-time read of the data plane's counters.
type Snapshot struct {
	Services map[lb.ServiceKey]Counters `json:"-"`
	Reals    map[RealRef]RealStatus     `json:"-"`
	Laddrs   map[LaddrRef]LaddrStatus   `json:"-"`
	Datapath map[string]uint64          `json:"datapath"`
	Ifaces   map[string]Verdicts        `json:"ifaces"` // per receiving interface
	ConnsMax int                        `json:"conns_max"`
	// Entries is the connection table's fill at the last sweep (two per
	// connection); Evicted estimates live entries the table dropped because
	// it was full, since this run started.
	Entries int    `json:"entries"`
	Evicted uint64 `json:"evicted"`
	// LocalPorts is how many local ports a LIP has toward one real server.
	LocalPorts int `json:"local_ports"`
	// Workers are a polling data plane's per-worker packet counts (dpdk:
	// one per lcore); none for XDP, whose work the kernel spreads.
	Workers []WorkerCounters `json:"workers,omitempty"`
}

// WorkerCounters are one polling worker's packets: received from its
// queues (Rx), handed to the worker owning them and taken from the others
// (the connection's owner forwards it), dropped on a full handoff ring,
// not taken by a port's transmit ring, and through the kernel exception
// path both ways.
type WorkerCounters struct {
	Worker      int    `json:"worker"`
	CPU         int    `json:"cpu"`
	Rx          uint64 `json:"rx"`
	Handed      uint64 `json:"handed"`
	Taken       uint64 `json:"taken"`
	HandDropped uint64 `json:"hand_dropped"`
	TxDropped   uint64 `json:"tx_dropped"`
	ToKernel    uint64 `json:"to_kernel"`
	FromKernel  uint64 `json:"from_kernel"`
}

// Conn is one tracked connection.
type Conn struct {
	Proto   lb.Proto       `json:"proto"`
	Client  netip.AddrPort `json:"client"`
	Virtual netip.AddrPort `json:"virtual"`
	Local   netip.AddrPort `json:"local"`
	Real    netip.AddrPort `json:"real"`
	State   flow.State     `json:"state"`
	Expire  time.Duration  `json:"expire"`
}

// Factory starts a backend.
type Factory func(Options) (Backend, error)

var (
	factories = map[string]Factory{}
	missing   = map[string]string{}
)

// Register makes a backend available to `mbx run --backend NAME`.
func Register(name string, f Factory) { factories[name] = f }

// RegisterMissing records a backend this binary was built without, and how to
// get a binary that has it.
func RegisterMissing(name, how string) { missing[name] = how }

// Open starts the backend called name.
func Open(name string, opts Options) (Backend, error) {
	opts.Defaults()
	f, ok := factories[name]
	if !ok {
		if how, ok := missing[name]; ok {
			return nil, fmt.Errorf("backend %q is not built into this binary: %s", name, how)
		}
		return nil, fmt.Errorf("unknown backend %q (have %v)", name, Names())
	}
	return f(opts)
}

// Names lists the registered backends.
func Names() []string {
	var n []string
	for k := range factories {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func init() {
	RegisterMissing("dpdk", "build one with `make build-dpdk` (go build -tags dpdk; needs libdpdk-dev)")
}

// MonitorOptions configure a data plane's stream-monitor tracker.
type MonitorOptions struct {
	Ifaces []string // passive: interfaces the backend is attached to
	// Inline: interface pairs (attached) the monitor sits between, each
	// forwarding both ways; handlers may drop or modify packets.
	Inline [][2]string
	// Filter selects the connections (and orphans) to track; nil: all.
	Filter *filter.Filter
	// BufferSize: out-of-order bytes held per side at most.
	BufferSize int
	// IdleTimeout ends idle connections; Linger keeps ended ones for
	// their late packets. 0: the monitor's defaults.
	IdleTimeout, Linger time.Duration
	// Sample, in (0, 1): a passive monitor tracks only that fraction of the
	// connections, chosen in the data plane. 0: all.
	Sample float64
}

// MonitorPlane is a backend that tracks TCP connections for the stream
// monitor in its data plane and feeds a monitor.Monitor.
type MonitorPlane interface {
	StartMonitor(m *monitor.Monitor, opts MonitorOptions) (MonitorRun, error)
}

// MonitorRun is a running data-plane tracker.
type MonitorRun interface {
	// Run applies the tracker's reports to the monitor (its handlers run on
	// this goroutine) until Stop.
	Run() error
	Stop()
	// Refresh brings the mirrored connections' counters up to date (before
	// the monitor is closed, after Stop).
	Refresh()
	// Snapshot calls fn for every connection in the tracker's table.
	Snapshot(fn func(c *monitor.Conn))
	// Stats are the tracker's counters.
	Stats() (MonitorStats, error)
}

// MonitorStats are a data-plane tracker's counters.
type MonitorStats struct {
	Packets   uint64 `json:"packets"`
	TCP       uint64 `json:"tcp"`
	Orphans   uint64 `json:"orphans"`
	Filtered  uint64 `json:"filtered"`
	Fragments uint64 `json:"fragments"`
	Malformed uint64 `json:"malformed"`
	Conns     uint64 `json:"conns"`
	Records   uint64 `json:"records"`
	Lost      uint64 `json:"lost"` // reports the ring buffer had no room for
	Full      uint64 `json:"full"` // connections the table had no room for
	// IP fragments: datagrams reassembled in Go and tracked, and
	// fragments left untracked (over the copy size, or a datagram over
	// what the tracker can be handed again).
	Reassembled        uint64 `json:"reassembled,omitempty"`
	FragmentsUntracked uint64 `json:"fragments_untracked,omitempty"`
	// Inline mode: packets the data plane sent to Go, forwarded itself
	// (filtered out, or let go by a handler), dropped itself (connections a
	// handler dropped), or could not hand to Go (no socket: dropped).
	ToGo      uint64 `json:"to_go,omitempty"`
	Forwarded uint64 `json:"forwarded,omitempty"`
	Dropped   uint64 `json:"dropped,omitempty"`
	NoSocket  uint64 `json:"no_socket,omitempty"`
	// Inline mode, Go's side: packets forwarded after the handlers, dropped
	// by them, and lost because every send buffer was in flight.
	GoForwarded uint64 `json:"go_forwarded,omitempty"`
	GoDropped   uint64 `json:"go_dropped,omitempty"`
	TxFull      uint64 `json:"tx_full,omitempty"`
}

// DatapathCounters name the datapath's counters, in the order of enum
// counter in bpf/consts.h; every backend counts the same events under these
// names (mbx ipvsadm --stats -d, the vectors' counters:). Forwarded packets
// and bytes are counted per real server, not here.
var DatapathCounters = []string{
	"rx",
	"pass_not_ours",
	"pass_malformed",
	"drop_malformed",
	"drop_fragment",
	"drop_no_conn",
	"drop_no_real",
	"drop_no_laddr",
	"drop_no_port",
	"conn_new",
	"conn_reuse",
	"tx",
	"redirect",
	"pass_no_neigh",
	"pass_fib",
	"drop_fib",
	"entry_deleted",
	"drop_too_big",
	"drop_no_neigh",
	"icmp_error",
	"icmp_too_big",
	"fragment",
}

package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Prefix starts every namespace the lab creates: mbxl-<owner pid>-<lab>-<host>.
// Owner pid 0 marks a lab made by `mbx lab up` (kept until `mbx lab down`).
const Prefix = "mbxl-"

// Topology describes hosts and the links between them.
type Topology struct {
	Name    string
	Doc     string
	Hosts   []string // host names; "sw" hosts get a bridge br0 over their ports
	Links   []Link
	Routes  []Route
	Bridged []string // hosts that are switches
}

// Link is a veth pair between two hosts.
type Link struct{ A, B End }

// End is one side of a link.
type End struct {
	Host, Iface string
	Addrs       []string // prefixes
	MAC         string
}

// Route is a static route on a host.
type Route struct {
	Host, Dst, Via string
}

// Lab is a built topology.
type Lab struct {
	Topo  *Topology
	Name  string
	Owner int
}

// NS returns the namespace name of a host.
func (l *Lab) NS(host string) string {
	return fmt.Sprintf("%s%d-%s-%s", Prefix, l.Owner, l.Name, host)
}

// Command returns a command that runs inside host's namespace.
func (l *Lab) Command(host, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", l.NS(host), name}, args...)...)
}

// Run runs a command in host and returns its combined output.
func (l *Lab) Run(host, name string, args ...string) (string, error) {
	out, err := l.Command(host, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), host, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func pidAlive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// CleanStale removes namespaces of labs whose owner process is gone.
func CleanStale() {
	names, _ := listNS()
	for _, n := range names {
		rest := strings.TrimPrefix(n, Prefix)
		pidStr, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidStr); err == nil && pid != 0 && !pidAlive(pid) {
			killNS(n)
			_ = netns.DeleteNamed(n)
		}
	}
}

func listNS() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), Prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Up builds topo as lab name, owned by owner (a pid, or 0 for a user's lab).
// An existing lab of the same owner and name is removed first.
func Up(topo *Topology, name string, owner int) (*Lab, error) {
	CleanStale()
	l := &Lab{Topo: topo, Name: name, Owner: owner}
	l.Down()
	if err := l.build(); err != nil {
		l.Down()
		return nil, err
	}
	return l, nil
}

// Down removes every namespace of the lab (and so its links).
func (l *Lab) Down() {
	for _, h := range l.Topo.Hosts {
		killNS(l.NS(h))
		_ = netns.DeleteNamed(l.NS(h))
	}
}

// killNS ends every process in a namespace: deleting a namespace's name does
// not, and its servers would keep it alive.
func killNS(ns string) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func newNamedNS(name string) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	defer netns.Set(orig)
	ns, err := netns.NewNamed(name)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return ns.Close()
}

func (l *Lab) handle(host string) (*netlink.Handle, netns.NsHandle, error) {
	ns, err := netns.GetFromName(l.NS(host))
	if err != nil {
		return nil, 0, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, 0, err
	}
	return h, ns, nil
}

func (l *Lab) sysctl(host, key, val string) error {
	_, err := l.Run(host, "sysctl", "-q", "-w", key+"="+val)
	return err
}

func (l *Lab) build() error {
	for _, h := range l.Topo.Hosts {
		if err := newNamedNS(l.NS(h)); err != nil {
			return err
		}
		hd, ns, err := l.handle(h)
		if err != nil {
			return err
		}
		lo, err := hd.LinkByName("lo")
		if err == nil {
			err = hd.LinkSetUp(lo)
		}
		hd.Close()
		ns.Close()
		if err != nil {
			return err
		}
	}
	isSwitch := map[string]bool{}
	for _, s := range l.Topo.Bridged {
		isSwitch[s] = true
		hd, ns, err := l.handle(s)
		if err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		err = hd.LinkAdd(br)
		if err == nil {
			err = hd.LinkSetUp(br)
		}
		hd.Close()
		ns.Close()
		if err != nil {
			return fmt.Errorf("bridge in %s: %w", s, err)
		}
	}
	for i, lk := range l.Topo.Links {
		if err := l.addLink(i, lk, isSwitch); err != nil {
			return err
		}
	}
	for _, r := range l.Topo.Routes {
		if _, err := l.Run(r.Host, "ip", "route", "add", r.Dst, "via", r.Via); err != nil {
			return err
		}
	}
	for _, h := range l.Topo.Hosts {
		if isSwitch[h] {
			continue
		}
		// Endpoints close TIME_WAIT churn quickly (Connection: close load):
		// no TIME_WAIT sockets, so a Full-NAT LIP port reused within 60 s
		// meets a listener, not an old connection.
		//
		// Without TIME_WAIT sockets, the kernel also cannot park a closed
		// socket whose FIN was acknowledged (an orphan in FIN_WAIT_2
		// becomes a timewait socket, which max_tw_buckets=0 refuses): the
		// peer's FIN, when it comes in a later segment than its ACK, then
		// finds no socket and is answered with a RST. A fin_timeout over
		// TCP_TIMEWAIT_LEN (60 s) keeps that orphan a full socket for the
		// rest of the timeout (30 s here), which acknowledges the FIN.
		// Seen as a rare RST at the end of a curl through the DPDK
		// backend under load (TestLabLateFIN reproduces it).
		for k, v := range map[string]string{"net.ipv4.tcp_tw_reuse": "1", "net.ipv4.tcp_max_tw_buckets": "0", "net.ipv4.tcp_fin_timeout": "90"} {
			if err := l.sysctl(h, k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// addLink creates a veth pair, moves each end into its host, and applies
// what veth needs (platform notes): GRO on every end (a veth that receives
// XDP_REDIRECT/XDP_TX frames needs NAPI), and tx checksum offload off on
// every end, switch ports included: a CHECKSUM_PARTIAL packet (also one that
// GRO merged and a bridge port re-segmented) that becomes an xdp_frame is
// never completed.
func (l *Lab) addLink(i int, lk Link, isSwitch map[string]bool) error {
	tmpA, tmpB := fmt.Sprintf("mbxa%d_%d", os.Getpid()%100000, i), fmt.Sprintf("mbxb%d_%d", os.Getpid()%100000, i)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tmpA}, PeerName: tmpB}); err != nil {
		return fmt.Errorf("veth %s-%s: %w", lk.A.Host, lk.B.Host, err)
	}
	for _, pair := range []struct {
		tmp string
		end End
	}{{tmpA, lk.A}, {tmpB, lk.B}} {
		if err := l.placeEnd(pair.tmp, pair.end, isSwitch[pair.end.Host]); err != nil {
			_ = netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tmpA}})
			return err
		}
	}
	return nil
}

func (l *Lab) placeEnd(tmp string, e End, isSwitch bool) error {
	lk, err := netlink.LinkByName(tmp)
	if err != nil {
		return err
	}
	ns, err := netns.GetFromName(l.NS(e.Host))
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := netlink.LinkSetNsFd(lk, int(ns)); err != nil {
		return fmt.Errorf("moving %s to %s: %w", e.Iface, e.Host, err)
	}
	hd, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer hd.Close()
	lk, err = hd.LinkByName(tmp)
	if err != nil {
		return err
	}
	if err := hd.LinkSetName(lk, e.Iface); err != nil {
		return err
	}
	if e.MAC != "" {
		mac, _ := net.ParseMAC(e.MAC)
		if err := hd.LinkSetHardwareAddr(lk, mac); err != nil {
			return err
		}
	}
	for _, a := range e.Addrs {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return err
		}
		na := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			na.Flags = unix.IFA_F_NODAD // tests start at once
		}
		if err := hd.AddrAdd(lk, na); err != nil {
			return fmt.Errorf("address %s on %s/%s: %w", a, e.Host, e.Iface, err)
		}
	}
	if isSwitch {
		br, err := hd.LinkByName("br0")
		if err != nil {
			return err
		}
		if err := hd.LinkSetMaster(lk, br); err != nil {
			return err
		}
		if err := attachXDPPass(l.NS(e.Host), e.Iface); err != nil {
			return err
		}
	}
	if err := hd.LinkSetUp(lk); err != nil {
		return err
	}
	if _, err := l.Run(e.Host, "ethtool", "-K", e.Iface, "gro", "on"); err != nil {
		return err
	}
	if _, err := l.Run(e.Host, "ethtool", "-K", e.Iface, "tx", "off"); err != nil {
		return err
	}
	return nil
}

// Topologies are the labs mbx knows by name.
var Topologies = map[string]*Topology{
	"fnat-two-arm": {
		Name: "fnat-two-arm",
		Doc: "DPVS tutorial's two-arm Full-NAT: client 198.18.0.2 -- wan0 [lb] lan0 -- switch -- rs1 198.18.1.2, rs2 198.18.1.3 (rs3 198.18.1.4 spare). " +
			"VIP 198.18.0.100, LIP 198.18.1.200. IPv6 alongside: client fd00:198::a:2, wan0 fd00:198::a:1, lan0 fd00:198::b:1, rs1-3 fd00:198::b:2-4.",
		Hosts:   []string{"client", "lb", "sw", "rs1", "rs2", "rs3"},
		Bridged: []string{"sw"},
		Links: []Link{
			{End{Host: "client", Iface: "eth0", Addrs: []string{"198.18.0.2/24", "fd00:198::a:2/112"}}, End{Host: "lb", Iface: "wan0", Addrs: []string{"198.18.0.1/24", "fd00:198::a:1/112"}}},
			{End{Host: "rs3", Iface: "eth0", Addrs: []string{"198.18.1.4/24", "fd00:198::b:4/112"}}, End{Host: "sw", Iface: "p3"}},
			{End{Host: "lb", Iface: "lan0", Addrs: []string{"198.18.1.1/24", "fd00:198::b:1/112"}}, End{Host: "sw", Iface: "p0"}},
			{End{Host: "rs1", Iface: "eth0", Addrs: []string{"198.18.1.2/24", "fd00:198::b:2/112"}}, End{Host: "sw", Iface: "p1"}},
			{End{Host: "rs2", Iface: "eth0", Addrs: []string{"198.18.1.3/24", "fd00:198::b:3/112"}}, End{Host: "sw", Iface: "p2"}},
		},
	},
	"lb-routed": {
		Name: "lb-routed",
		Doc: "Forwarding modes: client 198.18.0.2 -- wan0 [lb] lan0 198.18.1.1 -- switch -- rs1 198.18.1.2 (on-link) and " +
			"router 198.18.1.254 -- 198.18.5.254 -- rs2 198.18.5.7 (routed). VIP 198.18.0.100. Real servers route back through lb. " +
			"IPv6 alongside: client fd00:198::a:2, lan0 fd00:198::b:1, rs1 fd00:198::b:2, router fd00:198::b:fe / fd00:198::c:fe, rs2 fd00:198::c:7.",
		Hosts:   []string{"client", "lb", "sw", "rs1", "router", "rs2"},
		Bridged: []string{"sw"},
		Links: []Link{
			{End{Host: "client", Iface: "eth0", Addrs: []string{"198.18.0.2/24", "fd00:198::a:2/112"}}, End{Host: "lb", Iface: "wan0", Addrs: []string{"198.18.0.1/24", "fd00:198::a:1/112"}}},
			{End{Host: "lb", Iface: "lan0", Addrs: []string{"198.18.1.1/24", "fd00:198::b:1/112"}}, End{Host: "sw", Iface: "p0"}},
			{End{Host: "rs1", Iface: "eth0", Addrs: []string{"198.18.1.2/24", "fd00:198::b:2/112"}}, End{Host: "sw", Iface: "p1"}},
			{End{Host: "router", Iface: "eth0", Addrs: []string{"198.18.1.254/24", "fd00:198::b:fe/112"}}, End{Host: "sw", Iface: "p2"}},
			{End{Host: "router", Iface: "eth1", Addrs: []string{"198.18.5.254/24", "fd00:198::c:fe/112"}}, End{Host: "rs2", Iface: "eth0", Addrs: []string{"198.18.5.7/24", "fd00:198::c:7/112"}}},
		},
		Routes: []Route{
			{Host: "lb", Dst: "198.18.5.0/24", Via: "198.18.1.254"},
			{Host: "router", Dst: "default", Via: "198.18.1.1"},
			{Host: "rs1", Dst: "default", Via: "198.18.1.1"},
			{Host: "rs2", Dst: "default", Via: "198.18.5.254"},
			{Host: "lb", Dst: "fd00:198::c:0/112", Via: "fd00:198::b:fe"},
			{Host: "router", Dst: "::/0", Via: "fd00:198::b:1"},
			{Host: "rs1", Dst: "::/0", Via: "fd00:198::b:1"},
			{Host: "rs2", Dst: "::/0", Via: "fd00:198::c:fe"},
		},
	},
	"bricks-tap": {
		Name: "bricks-tap",
		Doc: "A tap for bricks: client1-3 198.18.2.11-13 and srv 198.18.2.10 on one switch; srv's mir0 is a mirror " +
			"port (lab.Mirror) wired to lb's in0, the engine's input. lb's wan0 (198.18.3.1, to client1's eth1) is the daemon's own.",
		Hosts:   []string{"client1", "client2", "client3", "srv", "sw", "lb"},
		Bridged: []string{"sw"},
		Links: []Link{
			{End{Host: "srv", Iface: "eth0", Addrs: []string{"198.18.2.10/24"}}, End{Host: "sw", Iface: "p0"}},
			{End{Host: "client1", Iface: "eth0", Addrs: []string{"198.18.2.11/24"}}, End{Host: "sw", Iface: "p1"}},
			{End{Host: "client2", Iface: "eth0", Addrs: []string{"198.18.2.12/24"}}, End{Host: "sw", Iface: "p2"}},
			{End{Host: "client3", Iface: "eth0", Addrs: []string{"198.18.2.13/24"}}, End{Host: "sw", Iface: "p3"}},
			{End{Host: "srv", Iface: "mir0"}, End{Host: "lb", Iface: "in0"}},
			{End{Host: "client1", Iface: "eth1", Addrs: []string{"198.18.3.2/24"}}, End{Host: "lb", Iface: "wan0", Addrs: []string{"198.18.3.1/24"}}},
		},
	},
	"inline": {
		Name: "inline",
		Doc: "A bump in the wire (mOS inline mode): client 198.18.6.2 -- in0 [lb] in1 -- srv 198.18.6.10, one subnet; " +
			"lb forwards between in0 and in1 (mbx run --inline in0:in1) and has no addresses there.",
		Hosts: []string{"client", "lb", "srv"},
		Links: []Link{
			{End{Host: "client", Iface: "eth0", Addrs: []string{"198.18.6.2/24"}}, End{Host: "lb", Iface: "in0"}},
			{End{Host: "lb", Iface: "in1"}, End{Host: "srv", Iface: "eth0", Addrs: []string{"198.18.6.10/24"}}},
		},
	},
	"fnat-one-arm": {
		Name: "fnat-one-arm",
		Doc: "One-arm Full-NAT: client 198.18.0.2, lb eth0 198.18.0.1, rs1 198.18.0.3, rs2 198.18.0.4 on one switch. " +
			"VIP 198.18.0.100, LIP 198.18.0.200. IPv6 alongside: client fd00:198::a:2, lb fd00:198::a:1, rs1 fd00:198::a:3, rs2 fd00:198::a:4.",
		Hosts:   []string{"client", "lb", "sw", "rs1", "rs2"},
		Bridged: []string{"sw"},
		Links: []Link{
			{End{Host: "client", Iface: "eth0", Addrs: []string{"198.18.0.2/24", "fd00:198::a:2/112"}}, End{Host: "sw", Iface: "p0"}},
			{End{Host: "lb", Iface: "eth0", Addrs: []string{"198.18.0.1/24", "fd00:198::a:1/112"}}, End{Host: "sw", Iface: "p1"}},
			{End{Host: "rs1", Iface: "eth0", Addrs: []string{"198.18.0.3/24", "fd00:198::a:3/112"}}, End{Host: "sw", Iface: "p2"}},
			{End{Host: "rs2", Iface: "eth0", Addrs: []string{"198.18.0.4/24", "fd00:198::a:4/112"}}, End{Host: "sw", Iface: "p3"}},
		},
	},
}

// Lookup returns a named topology.
func Lookup(name string) (*Topology, error) {
	t, ok := Topologies[name]
	if !ok {
		var names []string
		for n := range Topologies {
			names = append(names, n)
		}
		return nil, fmt.Errorf("unknown lab %q (have %s)", name, strings.Join(names, ", "))
	}
	return t, nil
}

// Existing returns the lab names (owner 0) present on this machine.
func Existing() []string {
	names, _ := listNS()
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		if rest, ok := strings.CutPrefix(n, Prefix+"0-"); ok {
			if i := strings.LastIndex(rest, "-"); i > 0 && !seen[rest[:i]] {
				seen[rest[:i]] = true
				out = append(out, rest[:i])
			}
		}
	}
	return out
}

// StartServers starts `mbx lab serve` on every host named rs* in the
// background (detached: they end when the lab's namespaces are removed and
// the processes are killed by Down's caller or by lab down).
func (l *Lab) StartServers() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, h := range l.Topo.Hosts {
		if !strings.HasPrefix(h, "rs") {
			continue
		}
		cmd := l.Command(h, self, "lab", "serve", "--name", h, "--listen", ":80")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return err
		}
		_ = cmd.Process.Release()
	}
	return nil
}

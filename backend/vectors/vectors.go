// Package vectors reads the datapath test vectors in testdata/vectors and
// replays them through any backend's datapath. A vector file is a small
// topology (mbx's interfaces and their neighbours), an ipvsadm configuration
// and a sequence of steps: a packet in on an interface, the expected verdict,
// and the expected packet out. Packets are written as header fields, built
// with gopacket (checksums computed), so the expected output doubles as a
// checksum check of the datapath's incremental updates.
package vectors

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// File is one vector file.
type File struct {
	Name     string  `yaml:"name"`
	Doc      string  `yaml:"doc"`
	Ifaces   []Iface `yaml:"ifaces"`
	Routes   []Route `yaml:"routes"`
	Config   string  `yaml:"config"` // ipvsadm command lines
	Inline   *Inline `yaml:"inline"` // the stream monitor inline between pairs
	Steps    []Step  `yaml:"steps"`
	Path     string  `yaml:"-"`
	Families []int   `yaml:"-"`
}

// Iface is one of mbx's interfaces in the vector's topology.
type Iface struct {
	Name      string     `yaml:"name"`
	MAC       string     `yaml:"mac"`
	Addr      string     `yaml:"addr"`  // prefix, e.g. 198.18.0.1/24
	Addrs     []string   `yaml:"addrs"` // extra /32 addresses (VIPs, LIPs)
	MTU       int        `yaml:"mtu"`
	Neighbors []Neighbor `yaml:"neighbors"`
}

// Route is a static route of mbx's node (e.g. to a routed real server).
type Route struct {
	Dst string `yaml:"dst"`
	Via string `yaml:"via"`
}

// Neighbor is a host on an interface's link, with a static ARP entry.
type Neighbor struct {
	Name string `yaml:"name"`
	IP   string `yaml:"ip"`
	MAC  string `yaml:"mac"`
}

// Inline puts the stream monitor inline between interface pairs (mbx run
// --inline): the datapath forwards between them, and sends what Filter
// selects to Go. With Sockets, Go's AF_XDP sockets are open (a packet for
// Go is redirected to them); without, such a packet is dropped.
type Inline struct {
	Pairs   [][2]string `yaml:"pairs"`
	Filter  string      `yaml:"filter"`
	Sockets bool        `yaml:"sockets"`
}

// Flow is a decision Go's handlers made for a connection, written back to
// an inline datapath: drop the rest of it, or forward it without Go.
type Flow struct {
	Client string `yaml:"client"` // ip:port
	Server string `yaml:"server"`
	Action string `yaml:"action"` // drop, bypass
}

// Step is one packet in and what must come out, or (Flow) a decision of
// Go's for an inline datapath.
type Step struct {
	Name     string            `yaml:"name"`
	Flow     *Flow             `yaml:"flow"`
	In       Packet            `yaml:"in"`
	Verdict  string            `yaml:"verdict"` // pass, drop, tx, redirect
	Out      *Packet           `yaml:"out"`     // overrides of In; nil: unchanged (pass) or irrelevant (drop)
	Counters map[string]uint64 `yaml:"counters"`
}

// Packet describes a frame by header fields.
type Packet struct {
	Iface      string         `yaml:"iface"`
	Eth        map[string]any `yaml:"eth"`
	ARP        map[string]any `yaml:"arp"`
	Outer      map[string]any `yaml:"outer"` // an IPIP outer header (src, dst, ttl) before ip
	IP         map[string]any `yaml:"ip"`
	TCP        map[string]any `yaml:"tcp"`
	UDP        map[string]any `yaml:"udp"`
	ICMP       map[string]any `yaml:"icmp"`
	Payload    string         `yaml:"payload"`     // text
	PayloadLen int            `yaml:"payload_len"` // or this many bytes of x
	// Quote is the packet an ICMP error quotes (built like a frame, its
	// Ethernet header left out), cut to QuoteLen bytes (0: whole).
	Quote    *Packet `yaml:"quote"`
	QuoteLen int     `yaml:"quote_len"`
	// Replace: this packet is the whole expected output, not overrides of the input.
	Replace  bool    `yaml:"replace"`
	Truncate int     `yaml:"truncate"` // cut the frame to this many bytes
	Patch    []Patch `yaml:"patch"`    // raw byte overwrites after building
	Raw      string  `yaml:"raw"`      // hex frame, instead of the fields
}

// Patch overwrites bytes at an offset of the built frame.
type Patch struct {
	Off int    `yaml:"off"`
	Hex string `yaml:"hex"`
}

// Load reads every *.yaml vector file in dir.
func Load(dir string) ([]*File, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no vector files in %s", dir)
	}
	var files []*File
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var f File
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		f.Path = p
		files = append(files, &f)
	}
	return files, nil
}

// Dir is the repository's vector directory, found from the test's working
// directory (any package directory of the module).
func Dir() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "testdata", "vectors"), nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("go.mod not found above the working directory")
		}
		d = parent
	}
}

// vars binds $names seen in expected outputs for later steps.
type vars map[string]uint64

// resolve turns a field value into a number, an address or a MAC string.
func (v vars) num(x any) (uint64, bool, error) {
	switch t := x.(type) {
	case int:
		return uint64(t), true, nil
	case string:
		if strings.HasPrefix(t, "$") {
			n, ok := v[t]
			return n, ok, nil
		}
		n, err := strconv.ParseUint(t, 0, 64)
		return n, true, err
	}
	return 0, false, fmt.Errorf("not a number: %v", x)
}

// macOf resolves an interface or neighbour name to its MAC, or parses a MAC.
func (f *File) macOf(name string) (net.HardwareAddr, error) {
	for _, i := range f.Ifaces {
		if i.Name == name {
			return net.ParseMAC(i.MAC)
		}
		for _, n := range i.Neighbors {
			if n.Name == name {
				return net.ParseMAC(n.MAC)
			}
		}
	}
	m, err := net.ParseMAC(name)
	if err != nil {
		return nil, fmt.Errorf("unknown host or MAC %q", name)
	}
	return m, nil
}

func parseAddr(x any) (netip.Addr, error) {
	s, _ := x.(string)
	return netip.ParseAddr(s)
}

func decodeHex(s string) ([]byte, error) {
	return hex.DecodeString(strings.ReplaceAll(strings.ReplaceAll(s, " ", ""), "\n", ""))
}

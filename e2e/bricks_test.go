package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// tapEnv is the bricks-tap lab with traffic mirrored to lb's in0 and the
// daemon running.
type tapEnv struct {
	*env
	ref *tcpdumpRun // what the mirror sends to in0
}

func newTapEnv(t *testing.T, daemonArgs ...string) *tapEnv {
	need(t, "tcpdump", "curl", "iperf3", "nginx")
	e := newEnv(t, "bricks-tap")
	// Mirrored packets must be wire-sized: no offloads that merge segments
	// (GRO) or hand the stack unsegmented ones (TSO/GSO) where the mirror
	// looks, or on the way there.
	for _, h := range []string{"client1", "client2", "client3", "srv"} {
		e.host(h, "ethtool", "-K", "eth0", "gro", "off", "gso", "off", "tso", "off")
	}
	for _, p := range []string{"p0", "p1", "p2", "p3"} {
		e.host("sw", "ethtool", "-K", p, "gro", "off", "gso", "off")
	}
	for i, h := range []string{"srv", "client1", "client2", "client3"} {
		e.host(h, "ip", "-6", "addr", "add", fmt.Sprintf("fd00:198::%d/64", 10+i), "dev", "eth0", "nodad")
	}
	unmirror, err := e.lab.Mirror("srv", "eth0", "mir0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unmirror)
	e.nginx("srv")
	e.startDaemon(append([]string{"--iface", "wan0", "--pin-dir", "none"}, daemonArgs...)...)
	return &tapEnv{env: e}
}

// tcpdumpRun is a tcpdump writing a pcap of one interface.
type tcpdumpRun struct {
	cmd  *exec.Cmd
	file string
	errs *bytes.Buffer
}

func (e *env) tcpdump(host, iface, file string, filter ...string) *tcpdumpRun {
	e.t.Helper()
	f, err := os.Create(file)
	if err != nil {
		e.t.Fatal(err)
	}
	// -w - : tcpdump's AppArmor profile may refuse the test's directory.
	args := append([]string{"-i", iface, "-n", "-U", "--immediate-mode", "-B", "16384", "-w", "-"}, filter...)
	r := &tcpdumpRun{cmd: e.lab.Command(host, "tcpdump", args...), file: file, errs: &bytes.Buffer{}}
	r.cmd.Stdout, r.cmd.Stderr = f, r.errs
	if err := r.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { r.cmd.Process.Kill(); r.cmd.Wait(); f.Close() })
	waitFor(e.t, 10*time.Second, func() bool { return strings.Contains(r.errs.String(), "listening on") }, "tcpdump on "+iface)
	return r
}

// stop ends the capture and returns its frames.
func (r *tcpdumpRun) stop(t *testing.T) [][]byte {
	t.Helper()
	r.cmd.Process.Signal(os.Interrupt)
	r.cmd.Wait()
	if !strings.Contains(r.errs.String(), "\n0 packets dropped by kernel") {
		t.Logf("tcpdump %s: %s", r.file, r.errs.String())
	}
	return r.frames(t)
}

// frames reads the capture file.
func (r *tcpdumpRun) frames(t *testing.T) [][]byte {
	t.Helper()
	f, err := os.Open(r.file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v (%s)", r.file, err, r.errs.String())
	}
	var frames [][]byte
	for {
		data, _, err := rd.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", r.file, err)
		}
		// IPv6 multicast (router solicitations, MLD reports, neighbour
		// solicitations) comes from the kernels at their own times, also
		// while one capture has stopped and another has not: left out.
		if len(data) >= 2 && data[0] == 0x33 && data[1] == 0x33 {
			continue
		}
		frames = append(frames, append([]byte(nil), data...))
	}
	return frames
}

// traffic runs bounded client traffic through the switch: curl from three
// clients (new connections each), an iperf3 TCP transfer and UDP datagrams.
func (e *tapEnv) traffic(curls int) {
	e.t.Helper()
	e.background("srv", "iperf3", "-s", "-p", "5201")
	e.waitTCP("srv", "127.0.0.1:5201")
	for _, c := range []string{"client1", "client2", "client3"} {
		e.host(c, "sh", "-c", fmt.Sprintf("for i in $(seq %d); do curl -s -o /dev/null --max-time 5 http://198.18.2.10/ || exit 1; done", curls))
	}
	e.host("client3", "sh", "-c", fmt.Sprintf("for i in $(seq %d); do curl -s -o /dev/null --max-time 5 'http://[fd00:198::10]/' || exit 1; done", curls/2))
	e.host("client1", "iperf3", "-c", "198.18.2.10", "-p", "5201", "-b", "20M", "-n", "2M")
	e.host("client2", "iperf3", "-c", "198.18.2.10", "-p", "5201", "-u", "-b", "2M", "-n", "200K", "-l", "1000")
	time.Sleep(300 * time.Millisecond) // the last packets reach the captures
}

// flowKey names a packet's connection the same way in both directions.
func flowKey(frame []byte) string {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.NoCopy)
	var a, b string
	if ip, ok := p.NetworkLayer().(*layers.IPv4); ok {
		a, b = ip.SrcIP.String(), ip.DstIP.String()
	} else if ip, ok := p.NetworkLayer().(*layers.IPv6); ok {
		a, b = ip.SrcIP.String(), ip.DstIP.String()
	} else {
		return "non-ip"
	}
	proto := "ip"
	switch l := p.TransportLayer().(type) {
	case *layers.TCP:
		a, b, proto = fmt.Sprintf("%s:%d", a, l.SrcPort), fmt.Sprintf("%s:%d", b, l.DstPort), "tcp"
	case *layers.UDP:
		a, b, proto = fmt.Sprintf("%s:%d", a, l.SrcPort), fmt.Sprintf("%s:%d", b, l.DstPort), "udp"
	}
	if a > b {
		a, b = b, a
	}
	return proto + " " + a + " " + b
}

func sortedFrames(fs [][]byte) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = string(f)
	}
	sort.Strings(out)
	return out
}

func sameFrames(a, b [][]byte) bool {
	x, y := sortedFrames(a), sortedFrames(b)
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

// TestBricksLoadBalancer: a 4-tuple LoadBalancer splits the mirrored
// traffic over four pipes, each read by tcpdump: every flow, both
// directions, is in exactly one capture, together they are the input, and
// 64+ flows spread over all four.
func TestBricksLoadBalancer(t *testing.T) {
	e := newTapEnv(t, "--metrics-addr", "127.0.0.1:9464")
	dir := t.TempDir()
	e.mustMbx("bricks", "load-balance", "in0", "4", "--hash", "4tuple")
	var outs []*tcpdumpRun
	for i := range 4 {
		outs = append(outs, e.tcpdump("lb", fmt.Sprintf("in0}%d", i), filepath.Join(dir, fmt.Sprintf("out%d.pcap", i))))
	}
	ref := e.tcpdump("srv", "mir0", filepath.Join(dir, "ref.pcap"))
	e.traffic(24)

	input := ref.stop(t)
	var union [][]byte
	flowOut := map[string]int{}
	perOut := make([]map[string]bool, 4)
	for i, o := range outs {
		frames := o.stop(t)
		perOut[i] = map[string]bool{}
		for _, f := range frames {
			k := flowKey(f)
			if prev, ok := flowOut[k]; ok && prev != i && k != "non-ip" {
				t.Errorf("flow %s is in captures %d and %d", k, prev, i)
			}
			flowOut[k] = i
			perOut[i][k] = true
		}
		union = append(union, frames...)
	}
	if len(input) < 500 {
		t.Fatalf("only %d packets mirrored", len(input))
	}
	if !sameFrames(union, input) {
		t.Errorf("the four captures hold %d packets, the input %d: not the same packets", len(union), len(input))
		logFrameDiff(t, union, input)
	}
	// Both directions: every TCP flow's SYN and SYN-ACK sit in one capture.
	dirs := map[string]int{}
	for _, f := range union {
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.NoCopy)
		if tcp, ok := p.TransportLayer().(*layers.TCP); ok && tcp.SYN {
			if tcp.ACK {
				dirs[flowKey(f)] |= 2
			} else {
				dirs[flowKey(f)] |= 1
			}
		}
	}
	flows := 0
	for k, d := range dirs {
		flows++
		if d != 3 {
			t.Errorf("flow %s: only one direction of its handshake was captured", k)
		}
	}
	if flows < 64 {
		t.Errorf("%d TCP flows, want 64+", flows)
	}
	for i, m := range perOut {
		if len(m) < flows/10 {
			t.Errorf("output %d got %d of %d flows: not roughly even", i, len(m), flows)
		}
	}
	t.Logf("%d packets, %d TCP flows; flows per output: %d %d %d %d", len(input), flows, len(perOut[0]), len(perOut[1]), len(perOut[2]), len(perOut[3]))

	// stats: the outputs' packets add up to what was captured.
	var st []struct {
		Brick, Output string
		Pkts, Drops   uint64
	}
	if err := json.Unmarshal([]byte(e.mustMbx("bricks", "stats", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, r := range st {
		if r.Output != "" {
			sum += r.Pkts
		}
	}
	if sum < uint64(len(input)) {
		t.Errorf("bricks stats count %d packets sent to outputs, the captures %d", sum, len(input))
	}
	if out := e.mustMbx("bricks", "stats"); !strings.Contains(out, "in0}3") {
		t.Errorf("bricks stats does not show the outputs:\n%s", out)
	}
	if page := e.host("lb", "curl", "-s", "http://127.0.0.1:9464/metrics"); !strings.Contains(page, `mbx_brick_packets_total{brick="in0-lb",`) {
		t.Errorf("the metrics page has no brick counters")
	}
}

// TestBricksDuplicator: three pipes get identical copies of the input;
// configured in the YAML file.
func TestBricksDuplicator(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mbx.yaml")
	if err := os.WriteFile(conf, []byte(`bricks:
  engines: [{name: tap, iface: in0, link: copies, start: true}]
  bricks: [{name: copies, type: duplicator, outputs: ["in0}0", "in0}1", "in0}2"]}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newTapEnv(t, "--config", conf)
	var outs []*tcpdumpRun
	for i := range 3 {
		outs = append(outs, e.tcpdump("lb", fmt.Sprintf("in0}%d", i), filepath.Join(dir, fmt.Sprintf("out%d.pcap", i))))
	}
	ref := e.tcpdump("srv", "mir0", filepath.Join(dir, "ref.pcap"))
	e.traffic(8)
	input := ref.stop(t)
	// The copies are identical, in the same order; together with the
	// input they are the same packets (the mirror's two directions may
	// interleave differently on their way to in0 than tcpdump saw them).
	first := outs[0].stop(t)
	if !sameFrames(first, input) {
		t.Errorf("output 0: %d packets, not the input's %d", len(first), len(input))
		logFrameDiff(t, first, input)
	}
	for i, o := range outs[1:] {
		frames := o.stop(t)
		if len(frames) != len(first) {
			t.Errorf("output %d: %d packets, output 0 %d", i+1, len(frames), len(first))
			continue
		}
		for j := range frames {
			if !bytes.Equal(frames[j], first[j]) {
				t.Errorf("output %d: packet %d differs from output 0's", i+1, j)
				break
			}
		}
	}
	if len(input) < 200 {
		t.Errorf("only %d packets mirrored", len(input))
	}
}

// TestBricksFilter: a Filter in front of a LoadBalancer passes exactly what
// tcpdump's filter selects; built with the verbs, one by one.
func TestBricksFilter(t *testing.T) {
	e := newTapEnv(t)
	dir := t.TempDir()
	const expr = "tcp port 80 and host 198.18.2.12"
	for _, args := range [][]string{
		{"engine", "add", "e0", "--iface", "in0", "--cpu", "1"},
		{"add", "web", "filter", "--filter", expr},
		{"add", "lb0", "loadbalancer", "--hash", "2tuple"},
		{"connect-output", "web", "lb0"},
		{"connect-output", "lb0", "in0}0", "in0}1"},
		{"link", "e0", "web"},
		{"start", "e0"},
	} {
		e.mustMbx(append([]string{"bricks"}, args...)...)
	}
	o0 := e.tcpdump("lb", "in0}0", filepath.Join(dir, "o0.pcap"))
	o1 := e.tcpdump("lb", "in0}1", filepath.Join(dir, "o1.pcap"))
	ref := e.tcpdump("srv", "mir0", filepath.Join(dir, "ref.pcap"), expr)
	e.traffic(8)
	want := ref.stop(t)
	got := append(o0.stop(t), o1.stop(t)...)
	if len(want) == 0 {
		t.Fatal("tcpdump's filter selected nothing")
	}
	if !sameFrames(got, want) {
		t.Errorf("the filter passed %d packets, tcpdump's filter selects %d", len(got), len(want))
	}
	// --cpu 1: in0's receive processing (where the engine runs) is a NAPI
	// thread pinned to CPU 1.
	if th := e.host("lb", "cat", "/sys/class/net/in0/threaded"); strings.TrimSpace(th) != "1" {
		t.Errorf("in0 is not in threaded NAPI mode: %q", th)
	}
	out := e.mustMbx("bricks", "show")
	for _, s := range []string{"e0", "running", "web", "filter", "lb0", "in0}1"} {
		if !strings.Contains(out, s) {
			t.Errorf("bricks show lacks %q:\n%s", s, out)
		}
	}
}

// TestBricksBadInput: each mistake is a one-line error and changes nothing.
func TestBricksBadInput(t *testing.T) {
	e := newEnv(t, "bricks-tap")
	e.startDaemon("--iface", "wan0", "--pin-dir", "none")
	for _, args := range [][]string{
		{"engine", "add", "e0", "--iface", "in0"},
		{"add", "lb0", "loadbalancer"},
		{"add", "a", "merge"},
		{"add", "b", "merge"},
		{"connect-output", "lb0", "in0}0", "in0}1"},
		{"connect-output", "a", "b"},
		{"link", "e0", "lb0"},
		{"start", "e0"},
	} {
		e.mustMbx(append([]string{"bricks"}, args...)...)
	}
	before := e.mustMbx("bricks", "show", "--json")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"add", "x", "splitter"}, "unknown brick type"},
		{[]string{"connect-output", "b", "a"}, "cycle"},
		{[]string{"connect-output", "b", "nosuchif0"}, "neither a brick nor an interface"},
		{[]string{"link", "e0", "a"}, "running"},
		{[]string{"unlink", "e0"}, "running"},
		{[]string{"connect-output", "lb0", "in0}2"}, "in use by running engine"},
		{[]string{"add", "f", "filter", "--filter", "tcp port"}, "filter"},
		{[]string{"engine", "add", "e1", "--iface", "nosuchif0"}, "does not exist"},
		{[]string{"add", "lb1", "loadbalancer", "--hash", "5tuple"}, "hash"},
		{[]string{"start", "nosuch"}, "no engine or brick"},
		{[]string{"load-balance", "in0", "x"}, "not a number"},
	} {
		out, err := e.mbx(append([]string{"bricks"}, c.args...)...)
		out = strings.TrimSpace(out)
		if err == nil || strings.Count(out, "\n") != 0 || !strings.Contains(out, c.want) {
			t.Errorf("mbx bricks %v: want a one-line error about %q, got %v: %q", c.args, c.want, err, out)
		}
	}
	if after := e.mustMbx("bricks", "show", "--json"); after != before {
		t.Errorf("a refused command changed the bricks:\n%s\n%s", before, after)
	}
	// The pipes exist while used and go with the daemon.
	e.host("lb", "ip", "link", "show", "in0{1")
	e.host("lb", "ip", "link", "show", "in0}1")
	e.stopDaemon()
	if out, err := e.lab.Run("lb", "ip", "-o", "link", "show"); err != nil || strings.Contains(out, "in0}") {
		t.Errorf("pipes left after the daemon stopped: %v\n%s", err, out)
	}
}

// logFrameDiff logs (some of) the frames only one side has.
func logFrameDiff(t *testing.T, got, want [][]byte) {
	count := map[string]int{}
	for _, f := range want {
		count[string(f)]++
	}
	for _, f := range got {
		count[string(f)]--
	}
	n := 0
	for f, c := range count {
		if c != 0 && n < 10 {
			n++
			p := gopacket.NewPacket([]byte(f), layers.LayerTypeEthernet, gopacket.Default)
			t.Logf("%+d x %d bytes: %s", -c, len(f), strings.ReplaceAll(p.String(), "\n", " "))
		}
	}
}

// TestBricksAFXDP: a LoadBalancer whose second output is an AF_XDP socket
// read in Go (`mbx bricks consume`, built on bricks/xsk): tcpdump's share
// and the Go consumer's share are together the input, flows kept whole.
func TestBricksAFXDP(t *testing.T) {
	e := newTapEnv(t)
	dir := t.TempDir()
	for _, args := range [][]string{
		{"engine", "add", "e0", "--iface", "in0"},
		{"add", "lb0", "loadbalancer", "--hash", "4tuple"},
		{"connect-output", "lb0", "in0}0", "xsk:go0"},
		{"link", "e0", "lb0"},
		{"start", "e0"},
	} {
		e.mustMbx(append([]string{"bricks"}, args...)...)
	}
	goFile := filepath.Join(dir, "go0.pcap")
	gf, err := os.Create(goFile)
	if err != nil {
		t.Fatal(err)
	}
	var goErr bytes.Buffer
	consumer := e.lab.Command("lb", mbxBin, "bricks", "--socket", e.socket, "consume", "-w", "-", "xsk:go0")
	consumer.Stdout, consumer.Stderr = gf, &goErr
	if err := consumer.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- consumer.Wait() }()
	t.Cleanup(func() { consumer.Process.Kill(); <-exited })
	select {
	case err := <-exited:
		exited <- err
		t.Fatalf("mbx bricks consume: %v: %s", err, goErr.String())
	case <-time.After(3 * time.Second):
	}
	if !strings.Contains(goErr.String(), "listening on") {
		t.Fatalf("mbx bricks consume did not start: %s", goErr.String())
	}
	o0 := e.tcpdump("lb", "in0}0", filepath.Join(dir, "o0.pcap"))
	ref := e.tcpdump("srv", "mir0", filepath.Join(dir, "ref.pcap"))
	e.traffic(12)
	input := ref.stop(t)
	viaTcpdump := o0.stop(t)
	consumer.Process.Signal(os.Interrupt)
	err = <-exited
	exited <- err
	gf.Close()
	viaGo := (&tcpdumpRun{cmd: consumer, file: goFile, errs: &goErr}).frames(t)
	t.Logf("input %d packets: tcpdump %d, Go consumer %d (%s)", len(input), len(viaTcpdump), len(viaGo), strings.TrimSpace(goErr.String()))
	if len(viaGo) == 0 || len(viaTcpdump) == 0 {
		t.Fatal("one output got nothing")
	}
	if !sameFrames(append(viaGo, viaTcpdump...), input) {
		t.Errorf("the two outputs hold %d packets, the input %d", len(viaGo)+len(viaTcpdump), len(input))
		logFrameDiff(t, append(viaGo, viaTcpdump...), input)
	}
	inGo := map[string]bool{}
	for _, f := range viaGo {
		inGo[flowKey(f)] = true
	}
	for _, f := range viaTcpdump {
		if k := flowKey(f); inGo[k] && k != "non-ip" {
			t.Errorf("flow %s reached both outputs", k)
			break
		}
	}
}

package vectors

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/mbx-net/mbx/cli/ipvsadm"
	"github.com/mbx-net/mbx/lb"
)

// Datapath is what a backend offers the replayer: one configured instance
// of its datapath in the vector's topology.
type Datapath interface {
	// Run processes one frame received on iface; verdict is one of
	// pass, drop, tx, redirect, aborted.
	Run(iface string, frame []byte) (verdict string, out []byte, err error)
	// Counters returns the datapath counters (names as in mbx ipvsadm --stats -d).
	Counters() (map[string]uint64, error)
}

// InlineDatapath is a datapath that runs the stream monitor inline.
type InlineDatapath interface {
	// Flow applies a handler's decision for the connection client-server.
	Flow(client, server netip.AddrPort, action string) error
}

// Setup builds a backend's datapath for a vector file and its configuration.
type Setup func(t *testing.T, f *File, cfg *lb.Config) Datapath

// Config parses a file's ipvsadm lines into a validated configuration.
func (f *File) ConfigModel() (*lb.Config, error) {
	ops, err := ipvsadm.ParseLines(f.Config)
	if err != nil {
		return nil, err
	}
	return (&lb.Config{}).Do(ops)
}

// Replay runs every vector file through the datapath setup builds.
func Replay(t *testing.T, setup Setup) {
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	files, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		t.Run(f.Name, func(t *testing.T) {
			cfg, err := f.ConfigModel()
			if err != nil {
				t.Fatalf("%s: config: %v", f.Path, err)
			}
			dp := setup(t, f, cfg)
			v := vars{}
			for i, st := range f.Steps {
				if st.Flow != nil {
					if err := runFlow(dp, st.Flow); err != nil {
						t.Fatalf("%s step %d (%s): %v", f.Path, i+1, st.Name, err)
					}
					continue
				}
				if err := runStep(dp, f, st, v); err != nil {
					t.Fatalf("%s step %d (%s): %v", f.Path, i+1, st.Name, err)
				}
			}
		})
	}
}

func runFlow(dp Datapath, fl *Flow) error {
	idp, ok := dp.(InlineDatapath)
	if !ok {
		return fmt.Errorf("the datapath does not run inline")
	}
	c, err := netip.ParseAddrPort(fl.Client)
	if err != nil {
		return err
	}
	s, err := netip.ParseAddrPort(fl.Server)
	if err != nil {
		return err
	}
	return idp.Flow(c, s, fl.Action)
}

func runStep(dp Datapath, f *File, st Step, v vars) error {
	in, err := f.build(st.In, v)
	if err != nil {
		return fmt.Errorf("building input: %w", err)
	}
	before, err := dp.Counters()
	if err != nil {
		return err
	}
	verdict, out, err := dp.Run(st.In.Iface, in)
	if err != nil {
		return err
	}
	if verdict != st.Verdict {
		return fmt.Errorf("verdict %s, want %s", verdict, st.Verdict)
	}
	after, err := dp.Counters()
	if err != nil {
		return err
	}
	for name, want := range st.Counters {
		if got := after[name] - before[name]; got != want {
			return fmt.Errorf("counter %s moved by %d, want %d", name, got, want)
		}
	}
	switch {
	case st.Out != nil:
		exp := merge(st.In, st.Out)
		bind(exp, out, v)
		want, err := f.build(exp, v)
		if err != nil {
			return fmt.Errorf("building expected output: %w", err)
		}
		if len(out) < len(want) && len(want) == 60 && bytes.Equal(out, want[:len(out)]) && !slices.ContainsFunc(want[len(out):], func(b byte) bool { return b != 0 }) {
			// A frame that shrank below Ethernet's minimum (NAT64's header
			// translation) leaves unpadded; the wire pads it.
			want = want[:len(out)]
		}
		if !bytes.Equal(out, want) {
			return fmt.Errorf("output differs\n got: %s\nwant: %s", hex.EncodeToString(out), hex.EncodeToString(want))
		}
		if err := VerifyChecksums(out); err != nil {
			return err
		}
	case verdict == "pass" || verdict == "drop":
		// A packet mbx does not translate must leave untouched.
		if verdict == "pass" && !bytes.Equal(out, in) {
			return fmt.Errorf("passed packet was modified\n got: %s\n  in: %s", hex.EncodeToString(out), hex.EncodeToString(in))
		}
	default:
		return fmt.Errorf("verdict %s needs an expected output (out:)", verdict)
	}
	return nil
}

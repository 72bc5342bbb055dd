package lab

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Worker runs functions on one OS thread that lives in a private, unnamed
// network namespace. The namespace disappears with the thread, so nothing
// can be left behind, even after a crash. Used by datapath unit tests and
// benchmarks (bpf_fib_lookup in BPF_PROG_TEST_RUN needs real interfaces).
type Worker struct {
	jobs chan func()
	done chan struct{}
}

// NewWorker starts the thread and its namespace.
func NewWorker() (*Worker, error) {
	w := &Worker{jobs: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread exits with its namespace when we return.
		// Pinned to CPU 0 so per-CPU datapath state (round-robin positions)
		// is deterministic across runs.
		var cpus unix.CPUSet
		cpus.Set(0)
		_ = unix.SchedSetaffinity(0, &cpus)
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.New() // unshare(CLONE_NEWNET) for this thread only
		if err != nil {
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		defer ns.Close()
		errc <- nil
		for job := range w.jobs {
			job()
		}
		close(w.done)
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return w, nil
}

// Do runs fn inside the namespace and returns its error.
func (w *Worker) Do(fn func() error) error {
	errc := make(chan error, 1)
	w.jobs <- func() {
		ok := false
		defer func() {
			if !ok { // fn called runtime.Goexit (t.Fatal): report instead of hanging
				errc <- fmt.Errorf("worker job did not return (t.Fatal inside Worker.Do?)")
			}
		}()
		err := fn()
		ok = true
		errc <- err
	}
	return <-errc
}

// Close ends the thread; the namespace goes with it.
func (w *Worker) Close() {
	close(w.jobs)
	<-w.done
}

// VethPairs creates, inside the worker's namespace, a veth pair NAME and
// NAMEp for each name, both up, and returns every end's ifindex by name.
// Datapath tests and benchmarks use the NAME ends as ports.
func (w *Worker) VethPairs(names []string) (map[string]int, error) {
	idx := map[string]int{}
	err := w.Do(func() error {
		for _, name := range names {
			la := netlink.NewLinkAttrs()
			la.Name = name
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: name + "p"}); err != nil {
				return err
			}
			for _, n := range []string{name, name + "p"} {
				l, err := netlink.LinkByName(n)
				if err != nil {
					return err
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
				idx[n] = l.Attrs().Index
			}
		}
		return nil
	})
	return idx, err
}

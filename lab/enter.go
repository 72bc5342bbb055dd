package lab

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread inside host's namespace. The thread returns to
// the original namespace before it is unlocked; if it cannot, the thread is
// left locked so the runtime ends it (a thread left in the lab could be Go's
// main thread and move the whole process into the lab).
func (l *Lab) Do(host string, fn func() error) error {
	return doInNS(l.NS(host), fn)
}

func doInNS(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("namespace %s: %w", name, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

package xdp

import (
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// fibMaxAge bounds how long the datapath trusts a memoized next hop even
// when no netlink event arrived (a lost event must not last).
const fibMaxAge = time.Second

// bumpFIB invalidates every next hop the datapath memoized.
func (b *Backend) bumpFIB() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fibGen++
	return b.writeConfig()
}

// watchFIB bumps the generation on every route, neighbour and link change in
// this network namespace, so memoized next hops follow the kernel.
func (b *Backend) watchFIB() error {
	done := make(chan struct{})
	routes := make(chan netlink.RouteUpdate, 64)
	neighs := make(chan netlink.NeighUpdate, 64)
	links := make(chan netlink.LinkUpdate, 64)
	if err := netlink.RouteSubscribe(routes, done); err != nil {
		return fmt.Errorf("route events: %w", err)
	}
	if err := netlink.NeighSubscribe(neighs, done); err != nil {
		close(done)
		return fmt.Errorf("neighbour events: %w", err)
	}
	if err := netlink.LinkSubscribe(links, done); err != nil {
		close(done)
		return fmt.Errorf("link events: %w", err)
	}
	b.fibDone = done
	go func() {
		for {
			select {
			case _, ok := <-routes:
				if !ok {
					return
				}
			case _, ok := <-neighs:
				if !ok {
					return
				}
			case _, ok := <-links:
				if !ok {
					return
				}
			}
			if err := b.bumpFIB(); err != nil {
				b.log.Warn("invalidating memoized next hops", "err", err)
			}
		}
	}()
	return nil
}

package control

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
)

// Daemon holds the desired state and the backend that realises it.
type Daemon struct {
	mu         sync.Mutex
	cfg        *lb.Config
	be         backend.Backend
	beName     string
	owned      map[ifAddr]bool // addresses mbx added (removed again by mbx)
	present    map[ifAddr]bool // addresses currently wanted and on their device
	configFile string
	log        *slog.Logger
}

// NewDaemon wraps a running backend with an empty configuration.
func NewDaemon(be backend.Backend, beName string, log *slog.Logger) *Daemon {
	return &Daemon{cfg: &lb.Config{}, be: be, beName: beName, owned: map[ifAddr]bool{}, present: map[ifAddr]bool{}, log: log}
}

// Do applies ops together: all of them or none.
func (d *Daemon) Do(ops []lb.Op) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	next, err := d.cfg.Do(ops)
	if err != nil {
		return err
	}
	if err := d.apply(next); err != nil {
		return err
	}
	for _, op := range ops {
		d.log.Info("applied", "op", op.Kind, "service", op.Service.String())
	}
	return nil
}

// SetConfigFile names the file Reload reads.
func (d *Daemon) SetConfigFile(path string) {
	d.mu.Lock()
	d.configFile = path
	d.mu.Unlock()
}

// Reload re-reads the configuration file and makes it the running
// configuration, applying only the difference (established connections are
// untouched). The file replaces the configuration whole, as keepalived's
// reload does: changes made at run time that are not in the file go. A file
// with any error changes nothing.
func (d *Daemon) Reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.configFile == "" {
		return errors.New("no configuration file to reload (mbx run --config FILE)")
	}
	ops, err := LoadConfigFile(d.configFile)
	if err != nil {
		return err
	}
	next, err := (&lb.Config{}).Do(ops)
	if err != nil {
		return fmt.Errorf("%s: %w", d.configFile, err)
	}
	if err := d.apply(next); err != nil {
		return err
	}
	d.log.Info("reloaded", "file", d.configFile, "services", len(next.Services))
	return nil
}

// apply makes next the running configuration. The order is: put addresses
// on devices, program the backend, remove addresses no longer wanted; a
// failure rolls back what was done. Called with d.mu held.
func (d *Daemon) apply(next *lb.Config) error {
	want := wantedAddrs(next)
	var add, del []ifAddr
	for a := range want {
		if !d.present[a] {
			add = append(add, a)
		}
	}
	for a := range d.present {
		if !want[a] {
			del = append(del, a)
		}
	}
	if err := checkDevices(add); err != nil {
		return err
	}
	var added []ifAddr
	rollback := func() {
		for _, a := range added {
			if d.owned[a] {
				_ = delAddr(a)
				delete(d.owned, a)
			}
		}
	}
	for _, a := range add {
		owned, err := addAddr(a)
		if err != nil {
			rollback()
			return err
		}
		if owned {
			d.owned[a] = true
		}
		added = append(added, a)
	}
	if err := d.be.Apply(next); err != nil {
		rollback()
		// Put the backend back to the running configuration.
		if rerr := d.be.Apply(d.cfg); rerr != nil {
			d.log.Error("restoring the running configuration after a failed change", "err", rerr)
		}
		return err
	}
	for _, a := range added {
		d.present[a] = true
	}
	for _, a := range del {
		if d.owned[a] {
			if err := delAddr(a); err != nil {
				d.log.Warn("removing address", "err", err)
			}
			delete(d.owned, a)
		}
		delete(d.present, a)
	}
	d.cfg = next
	return nil
}

// Config returns a copy of the running configuration.
func (d *Daemon) Config() *lb.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.Clone()
}

// Status returns the configuration with counters.
func (d *Daemon) Status() (*Status, error) {
	d.mu.Lock()
	cfg := d.cfg.Clone()
	d.mu.Unlock()
	snap, err := d.be.Snapshot()
	if err != nil {
		return nil, err
	}
	st := &Status{Backend: d.beName, Datapath: snap.Datapath, ConnsMax: snap.ConnsMax,
		Timeouts: lb.Seconds(cfg.Timeouts.Effective(flow.IPVSTimeouts()))}
	for _, s := range cfg.Services {
		ss := ServiceStatus{Service: *s, Stats: snap.Services[s.Key]}
		for _, r := range s.Reals {
			rs := snap.Reals[backend.RealRef{Service: s.Key, Real: r.AddrPort()}]
			ss.RealStats = append(ss.RealStats, RealStatus{Real: r, RealStatus: rs})
		}
		for _, la := range s.LocalAddrs {
			ss.LaddrStats = append(ss.LaddrStats, LaddrStatus{LocalAddr: la, LaddrStatus: snap.Laddrs[backend.LaddrRef{Service: s.Key, Addr: la.Addr}]})
		}
		st.Services = append(st.Services, ss)
	}
	return st, nil
}

// Conns lists connections.
func (d *Daemon) Conns(limit int) ([]backend.Conn, error) { return d.be.Conns(limit) }

// Shutdown removes the addresses mbx added. The backend is closed by its owner.
func (d *Daemon) Shutdown() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for a := range d.owned {
		errs = append(errs, delAddr(a))
	}
	d.owned = map[ifAddr]bool{}
	d.present = map[ifAddr]bool{}
	return errors.Join(errs...)
}

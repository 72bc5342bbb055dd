package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/health"
	"github.com/mbx-net/mbx/lb"
)

// Daemon holds the desired state and the backend that realises it.
type Daemon struct {
	mu         sync.Mutex
	cfg        *lb.Config
	be         backend.Backend
	beName     string
	owned      map[ifAddr]bool // addresses mbx added (removed again by mbx)
	level      *slog.LevelVar  // the logger's level, changeable at run time
	present    map[ifAddr]bool // addresses currently wanted and on their device
	health     *health.Monitor
	configFile string
	loadConfig func() ([]lb.Op, error)
	stateFile  string // desired state saved for a restart ("" = none)
	bricks     brickState
	monitor    *monitorState // monitor.go; nil without --monitor
	log        *slog.Logger
}

// NewDaemon wraps a running backend with an empty configuration.
func NewDaemon(be backend.Backend, beName string, log *slog.Logger) *Daemon {
	d := &Daemon{cfg: &lb.Config{}, be: be, beName: beName, owned: map[ifAddr]bool{}, present: map[ifAddr]bool{}, log: log}
	d.bricks = brickState{model: &bricks.Model{}, pipes: map[string]bool{}}
	d.health = health.New(log, d.healthChanged)
	return d
}

// effective is what the backend runs: the desired state with failed real
// servers removed, or at weight 0 with inhibit_on_failure.
func (d *Daemon) effective(cfg *lb.Config) *lb.Config {
	e := cfg.Clone()
	for _, s := range e.Services {
		reals := s.Reals[:0]
		for _, r := range s.Reals {
			if !d.health.Up(s.Key, r.AddrPort()) {
				if !r.InhibitOnFailure {
					continue
				}
				r.Weight = 0
			}
			reals = append(reals, r)
		}
		s.Reals = reals
	}
	return e
}

// healthChanged re-applies the configuration when a real server went up or down.
func (d *Daemon) healthChanged() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.be.Apply(d.effective(d.cfg)); err != nil {
		d.log.Error("applying a health change", "err", err)
	}
}

// Do applies ops together: all of them or none.
func (d *Daemon) Do(ops []lb.Op) error { return d.DoCommand(context.Background(), "", ops) }

// DoCommand is Do for a named command line (ipvsadm ...), traced as one
// span with an event per operation.
func (d *Daemon) DoCommand(ctx context.Context, command string, ops []lb.Op) (err error) {
	name := "mbx.ops"
	if f := strings.Fields(command); len(f) > 0 {
		name = f[0]
	}
	_, span := tracer.Start(ctx, name, trace.WithAttributes(
		attribute.String("mbx.command", command), attribute.Int("mbx.ops", len(ops))))
	defer func() { endSpan(span, err) }()
	for _, op := range ops {
		span.AddEvent(string(op.Kind), trace.WithAttributes(opAttributes(op)...))
	}
	if len(ops) == 1 {
		span.SetAttributes(opAttributes(ops[0])...)
	}
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
		d.log.Info("applied", "op", op.Kind, "service", op.Service.String(), "command", command)
	}
	return nil
}

// SetConfigFile names the YAML file Reload reads.
func (d *Daemon) SetConfigFile(path string) {
	if path == "" {
		return
	}
	d.SetConfigLoader(path, func() ([]lb.Op, error) { return LoadConfigFile(path) })
}

// SetConfigLoader names the file Reload reads and how to read it (YAML,
// keepalived.conf).
func (d *Daemon) SetConfigLoader(path string, load func() ([]lb.Op, error)) {
	d.mu.Lock()
	d.configFile, d.loadConfig = path, load
	d.mu.Unlock()
}

// Reload re-reads the configuration file and makes it the running
// configuration, applying only the difference (established connections are
// untouched). The file replaces the configuration whole, as keepalived's
// reload does: changes made at run time that are not in the file go. A file
// with any error changes nothing.
func (d *Daemon) Reload() error { return d.ReloadContext(context.Background(), "SIGHUP") }

// ReloadContext is Reload, traced; by says what asked for it.
func (d *Daemon) ReloadContext(ctx context.Context, by string) (err error) {
	_, span := tracer.Start(ctx, "mbx.reload", trace.WithAttributes(attribute.String("mbx.reload.trigger", by)))
	defer func() { endSpan(span, err) }()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.loadConfig == nil {
		return errors.New("no configuration file to reload (mbx run --config FILE or --keepalived-conf FILE)")
	}
	ops, err := d.loadConfig()
	if err != nil {
		return err
	}
	next, err := (&lb.Config{}).Do(ops)
	if err != nil {
		return fmt.Errorf("%s: %w", d.configFile, err)
	}
	var nextBricks *bricks.Model
	if d.bricks.load != nil {
		if nextBricks, err = d.bricks.load(); err != nil {
			return err
		}
		if nextBricks != nil {
			err = nextBricks.Validate(bricks.Env{LinkExists: linkExists, NumCPU: runtime.NumCPU()})
		}
		if err != nil {
			return fmt.Errorf("%s: bricks: %w", d.configFile, err)
		}
	}
	if err := d.apply(next); err != nil {
		return err
	}
	if nextBricks != nil {
		if err := d.applyBricks(nextBricks); err != nil {
			return fmt.Errorf("%s: bricks: %w", d.configFile, err)
		}
	}
	d.log.Info("reloaded", "file", d.configFile, "services", len(next.Services))
	span.SetAttributes(attribute.String("mbx.config.file", d.configFile), attribute.Int("mbx.services", len(next.Services)))
	return nil
}

// apply makes next the running configuration. The order is: put addresses
// on devices, program the backend, remove addresses no longer wanted; a
// failure rolls back what was done. Called with d.mu held.
func (d *Daemon) apply(next *lb.Config) error {
	want := wantedAddrs(next)
	if ao, ok := d.be.(backend.AddressOwner); ok && ao.OwnsAddresses() {
		want = map[ifAddr]bool{} // the data plane answers for them itself
	}
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
	if err := d.be.Apply(d.effective(next)); err != nil {
		rollback()
		// Put the backend back to the running configuration.
		if rerr := d.be.Apply(d.effective(d.cfg)); rerr != nil {
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
	d.health.Sync(next)
	d.saveState()
	return nil
}

// savedState is what a restarted daemon needs that the data plane does not
// hold: the desired state and which addresses mbx put on devices.
type savedState struct {
	Config *lb.Config `json:"config"`
	Owned  []ifAddrJS `json:"owned"`
}

type ifAddrJS struct {
	Prefix netip.Prefix `json:"prefix"`
	Dev    string       `json:"dev"`
}

// SetStateFile names the file the desired state is saved to after every
// change (for restarts without loss).
func (d *Daemon) SetStateFile(path string) {
	d.mu.Lock()
	d.stateFile = path
	d.mu.Unlock()
}

func (d *Daemon) saveState() {
	if d.stateFile == "" {
		return
	}
	st := savedState{Config: d.cfg}
	for a := range d.owned {
		st.Owned = append(st.Owned, ifAddrJS{a.prefix, a.dev})
	}
	b, err := json.Marshal(st)
	if err == nil {
		tmp := d.stateFile + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, d.stateFile)
		}
	}
	if err != nil {
		d.log.Warn("saving state for restarts", "file", d.stateFile, "err", err)
	}
}

// RestoreState makes the saved desired state running again (after a
// restart that took over a running data plane); false if there is none.
func (d *Daemon) RestoreState() (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stateFile == "" {
		return false, nil
	}
	b, err := os.ReadFile(d.stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil || st.Config == nil {
		return false, fmt.Errorf("state file %s is unreadable: %v", d.stateFile, err)
	}
	if err := st.Config.Validate(); err != nil {
		return false, fmt.Errorf("state file %s: %w", d.stateFile, err)
	}
	for _, a := range st.Owned {
		d.owned[ifAddr{a.Prefix, a.Dev}] = true
	}
	return true, d.apply(st.Config)
}

// Handover leaves addresses and the saved state in place for the next
// daemon (restart without loss); the backend is handed over by its owner.
func (d *Daemon) Handover() {
	d.health.Stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.saveState()
	// Brick engines are not kept across a restart: their pipes go too.
	if err := d.shutdownBricks(); err != nil {
		d.log.Warn("removing output pipes", "err", err)
	}
}

// SetLogLevel gives the daemon the level variable of its logger.
func (d *Daemon) SetLogLevel(lv *slog.LevelVar) {
	d.mu.Lock()
	d.level = lv
	d.mu.Unlock()
}

// LogLevel is the current log level's name.
func (d *Daemon) LogLevel() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.level == nil {
		return ""
	}
	return strings.ToLower(d.level.Level().String())
}

// SetLogLevelName changes the log level at run time.
func (d *Daemon) SetLogLevelName(name string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(name)); err != nil {
		return fmt.Errorf("bad log level %q (debug, info, warn, error)", name)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.level == nil {
		return fmt.Errorf("this daemon's log level is fixed")
	}
	old := d.level.Level()
	d.level.Set(l)
	d.log.Log(context.Background(), max(l, old), "log level changed", "from", old.String(), "to", l.String())
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
	cfg := d.effective(d.cfg)
	d.mu.Unlock()
	states := d.health.States()
	snap, err := d.be.Snapshot()
	if err != nil {
		return nil, err
	}
	st := &Status{Backend: d.beName, Datapath: snap.Datapath, ConnsMax: snap.ConnsMax, Ifaces: snap.Ifaces,
		Entries: snap.Entries, Evicted: snap.Evicted, LocalPorts: snap.LocalPorts, Workers: snap.Workers,
		Timeouts: lb.Seconds(cfg.Timeouts.Effective(flow.IPVSTimeouts()))}
	for _, s := range cfg.Services {
		ss := ServiceStatus{Service: *s, Stats: snap.Services[s.Key]}
		for _, r := range s.Reals {
			rs := snap.Reals[backend.RealRef{Service: s.Key, Real: r.AddrPort()}]
			st := RealStatus{Real: r, RealStatus: rs}
			if h, ok := states[health.Key{Service: s.Key, Real: r.AddrPort()}]; ok {
				st.Health = &h
			}
			ss.RealStats = append(ss.RealStats, st)
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
	d.health.Stop()
	monErr := d.stopMonitor()
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for a := range d.owned {
		errs = append(errs, delAddr(a))
	}
	d.owned = map[ifAddr]bool{}
	d.present = map[ifAddr]bool{}
	errs = append(errs, d.shutdownBricks(), monErr)
	if d.stateFile != "" {
		_ = os.Remove(d.stateFile)
	}
	return errors.Join(errs...)
}

package control

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/bricks"
)

// BricksRequest asks for brick verbs to be applied together.
type BricksRequest struct {
	Ops     []bricks.Op `json:"ops"`
	Command string      `json:"command,omitempty"`
}

// BricksStatus is the brick model with every brick's and output's counters.
type BricksStatus struct {
	bricks.Model
	Stats []BrickStat `json:"stats"`
	// XSKs are the running AF_XDP outputs, for consumers (bricks/xsk).
	XSKs []bricks.PlanXSK `json:"xsks,omitempty"`
}

// BrickStat is one row of `mbx bricks stats`: a brick, or one of its
// outputs. IfDrops are the output interface's transmit drops as the kernel
// counts them (a tool that does not keep up).
type BrickStat struct {
	Brick  string `json:"brick"`
	Output string `json:"output,omitempty"`
	backend.BrickCounters
	IfDrops uint64 `json:"if_drops,omitempty"`
}

type brickState struct {
	model   *bricks.Model
	planner bricks.Planner
	plan    *bricks.Plan
	pipes   map[string]bool // output pipes this daemon created
	load    func() (*bricks.Model, error)
}

func (d *Daemon) brickPlane() (backend.BrickPlane, error) {
	bp, ok := d.be.(backend.BrickPlane)
	if !ok {
		return nil, fmt.Errorf("the %s backend does not run bricks", d.beName)
	}
	return bp, nil
}

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// BricksDo applies brick verbs together: all of them or none.
func (d *Daemon) BricksDo(ctx context.Context, command string, ops []bricks.Op) (err error) {
	_, span := tracer.Start(ctx, "mbx.bricks", trace.WithAttributes(attribute.String("mbx.command", command), attribute.Int("mbx.ops", len(ops))))
	defer func() { endSpan(span, err) }()
	d.mu.Lock()
	defer d.mu.Unlock()
	next := d.bricks.model.Clone()
	for _, op := range ops {
		if err := next.Apply(op); err != nil {
			return err
		}
	}
	if err := d.applyBricks(next); err != nil {
		return err
	}
	d.log.Info("bricks changed", "command", command)
	return nil
}

// SetBricks replaces the whole brick model (the YAML config's bricks).
func (d *Daemon) SetBricks(m *bricks.Model) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applyBricks(m.Clone())
}

// SetBricksLoader tells Reload how to read the brick model from the
// configuration file.
func (d *Daemon) SetBricksLoader(load func() (*bricks.Model, error)) {
	d.mu.Lock()
	d.bricks.load = load
	d.mu.Unlock()
}

// applyBricks validates next whole, creates the pipes it needs, and has
// the backend run it; on any error nothing is changed (pipes created for
// next are removed again). Called with d.mu held.
func (d *Daemon) applyBricks(next *bricks.Model) error {
	if err := next.Validate(bricks.Env{LinkExists: linkExists, NumCPU: runtime.NumCPU()}); err != nil {
		return err
	}
	running := slices.ContainsFunc(next.Engines, func(e bricks.Engine) bool { return e.Running })
	bp, err := d.brickPlane()
	if err != nil && running {
		return err
	}
	var created []string
	undo := func() {
		for _, p := range created {
			_ = bricks.DeletePipe(p)
			delete(d.bricks.pipes, p)
		}
	}
	for _, p := range next.Pipes() {
		if d.bricks.pipes[p] {
			continue
		}
		made, err := bricks.EnsurePipe(p)
		if err != nil {
			undo()
			return err
		}
		if made {
			created = append(created, p)
			d.bricks.pipes[p] = true
		}
	}
	// A planner copy: ids allocated for a plan that fails are not kept.
	planner := d.bricks.planner.Clone()
	plan, err := planner.Plan(next)
	if err != nil {
		undo()
		return err
	}
	if bp != nil {
		if err := bp.ApplyBricks(plan); err != nil {
			undo()
			return err
		}
	}
	d.bricks.planner = planner
	d.bricks.model = next
	d.bricks.plan = plan
	// Pipes the new model no longer uses go.
	for p := range d.bricks.pipes {
		if !slices.Contains(next.Pipes(), p) {
			if err := bricks.DeletePipe(p); err != nil {
				d.log.Warn("removing an output pipe", "pipe", p, "err", err)
			}
			delete(d.bricks.pipes, p)
		}
	}
	return nil
}

// Bricks returns the brick model and its counters.
func (d *Daemon) Bricks() (*BricksStatus, error) {
	d.mu.Lock()
	model := d.bricks.model.Clone()
	labels := d.bricks.planner.Labels()
	var xsks []bricks.PlanXSK
	if d.bricks.plan != nil {
		xsks = d.bricks.plan.XSKs
	}
	d.mu.Unlock()
	st := &BricksStatus{Model: *model, XSKs: xsks}
	bp, err := d.brickPlane()
	if err != nil {
		return st, nil
	}
	counters, err := bp.BrickStats()
	if err != nil {
		return nil, err
	}
	for id, label := range labels {
		c, ok := counters[id]
		if !ok {
			continue
		}
		row := BrickStat{Brick: label, BrickCounters: c}
		if b, out, ok := strings.Cut(label, ">"); ok {
			row.Brick, row.Output = b, out
			dev := out
			if bricks.IsPipe(out) {
				dev = bricks.PipeHost(out)
			}
			if l, err := netlink.LinkByName(dev); err == nil && l.Attrs().Statistics != nil {
				row.IfDrops = l.Attrs().Statistics.TxDropped
			}
		}
		st.Stats = append(st.Stats, row)
	}
	slices.SortFunc(st.Stats, func(a, b BrickStat) int {
		return strings.Compare(a.Brick+">"+a.Output, b.Brick+">"+b.Output)
	})
	return st, nil
}

// shutdownBricks removes the pipes this daemon created (the backend stops
// the engines when it closes). Called with d.mu held.
func (d *Daemon) shutdownBricks() error {
	var errs []error
	for p := range d.bricks.pipes {
		errs = append(errs, bricks.DeletePipe(p))
	}
	d.bricks.pipes = map[string]bool{}
	return errors.Join(errs...)
}

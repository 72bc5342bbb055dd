//go:build dpdk

package dpdk

import (
	"encoding/gob"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mbx-net/mbx/backend/dpdk/datapath"
)

// Restart without loss (mbx stop --keep-datapath, SIGUSR2): DPDK's
// connection table lives in the process, so Handover writes it to a file
// in the pin directory (a plain directory here: /run/mbx/INSTANCE by
// default), and the next Open reads it back; the first Apply puts every
// connection on the worker that owns it now (datapath.Restore). --fresh
// discards the file. Nothing forwards between the two processes: TCP
// retransmits across the gap (a second or two: the EAL's start).

const stateFile = "dpdk-state.gob"

// stateVersion changes when savedState does: an older file is refused
// (the connections are dropped, the daemon says so) rather than misread.
const stateVersion = 1

type savedState struct {
	Version   int
	Conns     []datapath.SavedConn
	Persist   []datapath.SavedPersist
	Neighbors []datapath.Neighbor
	// Counters were added after version 1's first release: gob leaves
	// them empty in an older file, and an older binary skips them.
	Counters []datapath.SavedCounters
}

func (b *Backend) statePath() string { return filepath.Join(b.opts.PinDir, stateFile) }

// saveState writes the workers' tables (they are stopped).
func (b *Backend) saveState() error {
	if b.opts.PinDir == "" {
		return errors.New("no --pin-dir to keep the connections in")
	}
	st := savedState{Version: stateVersion}
	for _, l := range b.workers {
		st.Conns = append(st.Conns, l.dp.Save()...)
		st.Counters = append(st.Counters, l.dp.SaveCounters()...)
		if len(st.Neighbors) == 0 {
			st.Neighbors = l.dp.Neighbors()
		}
	}
	if len(b.workers) > 0 {
		st.Persist = b.workers[0].dp.SavePersist()
	}
	if err := os.MkdirAll(b.opts.PinDir, 0o700); err != nil {
		return err
	}
	tmp := b.statePath() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := gob.NewEncoder(f).Encode(&st); err != nil {
		f.Close()
		return fmt.Errorf("saving the connections: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, b.statePath()); err != nil {
		return err
	}
	if b.opts.Logger != nil {
		b.opts.Logger.Info("dpdk: connections saved for the next run", "entries", len(st.Conns), "file", b.statePath())
	}
	return nil
}

// loadState reads what a previous run saved (--fresh removes it).
func (b *Backend) loadState() error {
	if b.opts.PinDir == "" {
		return nil
	}
	if b.opts.Fresh {
		if err := os.Remove(b.statePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	f, err := os.Open(b.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	defer f.Close()
	var st savedState
	if err := gob.NewDecoder(f).Decode(&st); err != nil || st.Version != stateVersion {
		return fmt.Errorf("%s: not a state file of this mbx (version %d, %v): start with --fresh to discard it", b.statePath(), st.Version, err)
	}
	b.saved = &st
	b.adopted = max(len(st.Conns), 1)
	for _, l := range b.workers {
		for _, n := range st.Neighbors {
			_ = l.dp.SetNeighbor(n.Port, n.Addr, n.MAC[:])
		}
	}
	return nil
}

// restore puts the saved connections back on their owners (the first
// Apply: their services exist now) and removes the file.
func (b *Backend) restore() {
	st := b.saved
	b.saved = nil
	restored, dropped := 0, 0
	b.each(func(l *lane) {
		n, d := l.dp.Restore(st.Conns)
		restored, dropped = restored+n, dropped+d
		if l == b.workers[0] {
			l.dp.RestoreCounters(st.Counters)
		}
	})
	if len(b.workers) > 0 {
		b.workers[0].dp.RestorePersist(st.Persist)
	}
	if b.opts.Logger != nil {
		b.opts.Logger.Info("dpdk: connections of the previous run restored", "entries", restored, "dropped", dropped)
	}
	_ = os.Remove(b.statePath())
}

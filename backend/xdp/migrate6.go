package xdp

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Before local6, conns6 was keyed by the whole 40-byte tuple. A pinned
// table of that layout (left by an older mbx) is unpinned before the load,
// so a new one is made, and its connections are carried over once the
// adopted services have placed their addresses in local6: an upgrade
// keeps its IPv6 connections as a restart does.

// flowKey6v1 is the 40-byte key of that older layout.
type flowKey6v1 struct {
	Saddr  [4]uint32
	Daddr  [4]uint32
	Sport  uint16
	Dport  uint16
	Proto  uint8
	Family uint8
	_      [2]uint8
}

const (
	flowKey6v1Size = 40
	connFlagDR     = 0x2 // consts.h CONN_F_DR
	connFlagTun    = 0x4 // CONN_F_TUN
)

// detachConns6v1 unpins an old-layout conns6 in dir and returns it (nil
// when there is none). Its datapath keeps using it until mbx_lb6 is
// replaced, so its entries are read as late as possible (migrateConns6).
func detachConns6v1(dir string) (*ebpf.Map, error) {
	path := filepath.Join(dir, "conns6")
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pinned conns6: %w", err)
	}
	if m.KeySize() != flowKey6v1Size {
		m.Close()
		return nil, nil
	}
	if err := m.Unpin(); err != nil {
		m.Close()
		return nil, fmt.Errorf("unpinning the old conns6: %w", err)
	}
	return m, nil
}

// migrateConns6 places the adopted IPv6 services' addresses and copies
// old's entries into conns6 under the new keys; it returns how many it
// carried over and how many it could not (destination not placed).
func (b *Backend) migrateConns6(old *ebpf.Map) (moved, lost int, err error) {
	want := map[mbxLocalKey]bool{}
	for k, ps := range b.services {
		addLocal6(want, k, ps.laddrs)
	}
	plan, err := b.local6.plan(want)
	if err != nil {
		return 0, 0, err
	}
	if err := b.writeLocal6Adds(plan); err != nil {
		return 0, 0, err
	}
	var k flowKey6v1
	var c mbxConn6
	it := old.Iterate()
	for it.Next(&k, &c) {
		lid, ok := b.local6.lid[mbxLocalKey{Addr: k.Daddr, Family: k.Family}]
		if !ok {
			lost++
			continue
		}
		c.TwinLid = lidNone
		if c.Flags&(connFlagDR|connFlagTun) == 0 {
			t, ok := b.local6.lid[mbxLocalKey{Addr: c.Saddr, Family: c.OutFamily}]
			if !ok {
				lost++
				continue
			}
			c.TwinLid = t
		}
		nk := mbxFlowKey6{Saddr: k.Saddr, Sport: k.Sport, Dport: k.Dport, Lid: lid, Proto: k.Proto, Family: k.Family}
		if err := b.objs.Conns6.Put(&nk, &c); err != nil {
			return moved, lost, fmt.Errorf("conns6: %w", err)
		}
		moved++
	}
	return moved, lost, it.Err()
}

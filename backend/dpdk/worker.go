//go:build dpdk

package dpdk

import (
	"time"

	"github.com/mbx-net/mbx/backend/dpdk/datapath"
	"github.com/mbx-net/mbx/backend/dpdk/rte"
)

// Worker is one polling core's loop: it receives bursts from one queue of
// each port, runs them through its own datapath (share-nothing), and sends
// each packet out of the port the datapath chose, one burst per port.
type Worker struct {
	ports []rte.Port
	queue int
	dp    *datapath.Datapath
	rx    *rte.Burst
	tx    []*rte.Burst // per output port
	// Passed sees what the datapath leaves to the kernel, before it goes
	// to the port's TAP (SetTap) or, without one, is freed. frame is valid
	// only during the call.
	Passed func(port int, frame []byte)
	// Observe, when set, sees every packet on a port's wire, both ways:
	// received (before the datapath) and sent (after it), with the round's
	// time. The stream monitor uses it.
	Observe func(port int, frame []byte, now time.Time)
	now     time.Time
	swept   time.Time
	// TxDropped counts packets a port did not take (its tx ring full).
	TxDropped uint64
	mp        *rte.Mempool // for the datapath's own packets (ARP requests)
	ctl       *rte.Burst
	arp       [128]byte // an ARP request or a neighbour solicitation
	// The exception path (SetTap): per port, its TAP port or nil.
	taps  []*rte.Port
	tapTx []*rte.Burst
	tapRx *rte.Burst
	// ToKernel and FromKernel count the exception path's packets.
	ToKernel, FromKernel uint64
}

// SetTap makes tap (a net_tap port) port's exception path: packets the
// datapath passes go to the kernel through it (moved, not copied), and
// what the kernel sends on it leaves through port.
func (w *Worker) SetTap(port int, tap rte.Port) {
	if w.taps == nil {
		w.taps = make([]*rte.Port, len(w.ports))
		w.tapTx = make([]*rte.Burst, len(w.ports))
		w.tapRx = rte.NewBurst(w.rx.Cap())
	}
	w.taps[port] = &tap
	w.tapTx[port] = rte.NewBurst(w.rx.Cap())
}

// NewWorker makes a worker for queue of ports, bursts of burst packets;
// mp supplies buffers for the packets the datapath originates.
func NewWorker(ports []rte.Port, queue int, dp *datapath.Datapath, burst int, mp *rte.Mempool) *Worker {
	w := &Worker{ports: ports, queue: queue, dp: dp, rx: rte.NewBurst(burst), mp: mp, ctl: rte.NewBurst(1)}
	for range ports {
		w.tx = append(w.tx, rte.NewBurst(burst))
	}
	return w
}

// Close frees the worker's bursts (after its last Poll).
func (w *Worker) Close() {
	w.rx.Close()
	w.ctl.Close()
	if w.tapRx != nil {
		w.tapRx.Close()
	}
	for _, b := range w.tapTx {
		if b != nil {
			b.Close()
		}
	}
	for _, b := range w.tx {
		b.Close()
	}
}

// Poll runs one round over every port; it returns the packets received.
func (w *Worker) Poll() int {
	now := time.Now()
	w.now = now
	w.dp.Tick(now)
	if now.Sub(w.swept) >= time.Second {
		w.swept = now
		w.dp.Sweep()
	}
	n := 0
	for in := range w.ports {
		n += w.PollPort(in)
		if w.taps != nil && w.taps[in] != nil {
			n += w.pollTap(in)
		}
	}
	return n
}

// pollTap sends what the kernel wrote to port's TAP out of port.
func (w *Worker) pollTap(port int) int {
	n := w.tapRx.Rx(*w.taps[port], 0)
	for i := range n {
		if w.Observe != nil {
			w.Observe(port, w.tapRx.Data(i), w.now)
		}
		w.tapRx.Move(i, w.tx[port])
	}
	w.tapRx.Free()
	if k := w.tx[port].Len(); k > 0 {
		sent := w.tx[port].Tx(w.ports[port], w.queue)
		w.FromKernel += uint64(sent)
		w.TxDropped += uint64(k - sent)
	}
	return n
}

// PollPort receives one burst from port in and forwards it.
func (w *Worker) PollPort(in int) int {
	n := w.rx.Rx(w.ports[in], w.queue)
	for i := range n {
		if w.Observe != nil {
			w.Observe(in, w.rx.Data(i), w.now)
		}
		room, off := w.rx.Room(i)
		plen := len(w.rx.Data(i))
		v, out, noff, nlen := w.dp.ProcessAt(in, room, off, plen)
		if noff != off || nlen != plen {
			w.rx.SetView(i, noff, nlen) // within room: cannot fail
		}
		switch v {
		case datapath.Tx, datapath.Redirect:
			if w.Observe != nil {
				w.Observe(out, w.rx.Data(i), w.now)
			}
			// The output bursts are as large as the input one and are
			// sent below: Move cannot find them full.
			w.rx.Move(i, w.tx[out])
		case datapath.Pass:
			if w.Passed != nil {
				w.Passed(in, w.rx.Data(i))
			}
			if w.taps != nil && w.taps[in] != nil {
				w.rx.Move(i, w.tapTx[in])
			} else {
				w.rx.Keep(i, false)
			}
		default:
			w.rx.Keep(i, false)
		}
	}
	w.rx.Free()
	for out, b := range w.tx {
		if k := b.Len(); k > 0 {
			w.TxDropped += uint64(k - b.Tx(w.ports[out], w.queue))
		}
	}
	if w.taps != nil && w.taps[in] != nil {
		if k := w.tapTx[in].Len(); k > 0 {
			sent := w.tapTx[in].Tx(*w.taps[in], 0)
			w.ToKernel += uint64(sent)
			w.TxDropped += uint64(k - sent)
		}
	}
	w.resolve()
	return n
}

// resolve sends the ARP requests the datapath asks for.
func (w *Worker) resolve() {
	for {
		n, port := w.dp.Resolve(w.arp[:])
		if n == 0 || w.ctl.Alloc(w.mp, 1) != nil {
			return
		}
		w.ctl.SetLen(0, n)
		copy(w.ctl.Data(0), w.arp[:n])
		w.ctl.Tx(w.ports[port], w.queue)
	}
}

// Run polls until stop is closed.
func (w *Worker) Run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		w.Poll()
	}
}

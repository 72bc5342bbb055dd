//go:build dpdk

package dpdk

import (
	"time"

	"github.com/mbx-net/mbx/backend/dpdk/datapath"
	"github.com/mbx-net/mbx/backend/dpdk/rte"
)

// Worker is one polling core's loop: it receives bursts from its queue of
// each port (its index), runs them through its own datapath
// (share-nothing), and sends each packet out of the port the datapath
// chose, one burst per port, on its queue. With several workers (Connect)
// a packet another worker owns (datapath.Owner: a Full-NAT or NAT reply
// the NIC's RSS put on the wrong queue) is handed to it through a ring.
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
	// Several workers (Connect): rings to and from each other worker
	// (nil for itself), the burst handed packets are taken into, and the
	// neighbours the others learnt.
	to, from []*rte.Ring
	handed   *rte.Burst
	tags     []int
	inbox    chan datapath.Neighbor
	peers    []*Worker
	// Rx counts packets received from the ports' queues; Handed those
	// given to their owner, HandDropped those its full ring refused
	// (dropped), Taken those received from the others.
	Rx, Handed, HandDropped, Taken uint64
	// The inline stream monitor (SetInline): per port its peer or -1,
	// and the judge of each packet received on one.
	inline []int
	judge  func(frame []byte, now time.Time) (drop bool, out []byte)
	// InlineTooLarge counts replaced frames that did not fit their buffer
	// (dropped).
	InlineTooLarge uint64
}

// SetInline puts the ports with a peer (peer[port] >= 0) inline: what
// arrives on one is judged (the stream monitor) and sent out of its peer,
// not run through the datapath. nil takes them out.
func (w *Worker) SetInline(peer []int, judge func(frame []byte, now time.Time) (drop bool, out []byte)) {
	w.inline, w.judge = peer, judge
}

// inlinePort reports whether port in is inline.
func (w *Worker) inlinePort(in int) bool { return w.inline != nil && w.inline[in] >= 0 }

// forwardInline judges packet i of b, received on inline port in, and
// moves it to its peer's burst unless dropped; a replacement frame is
// copied into the packet's buffer (dropped if it does not fit).
func (w *Worker) forwardInline(b *rte.Burst, i, in int) {
	data := b.Data(i)
	drop, out := w.judge(data, w.now)
	if drop {
		b.Keep(i, false)
		return
	}
	if len(out) != len(data) || (len(out) > 0 && &out[0] != &data[0]) {
		if b.SetLen(i, len(out)) != nil {
			w.InlineTooLarge++
			b.Keep(i, false)
			return
		}
		copy(b.Data(i), out)
	}
	b.Move(i, w.tx[w.inline[in]])
}

// handRing is the slots of each worker-to-worker ring: ~20 ms of a
// worker's traffic at 200 kpps, for a consumer the OS preempted (on a
// machine whose cores the workers share with the kernel and the lab, as
// this project's CI: 1024 slots overflowed there, 111 of 60000 handed
// packets). A full ring drops, counted (drop_handoff).
const handRing = 4096

// Connect lets workers (each on queue i of every port) hand each other
// the packets they own, and tell each other the neighbours they learn.
func Connect(workers []*Worker) {
	if len(workers) < 2 {
		return
	}
	for _, w := range workers {
		w.to = make([]*rte.Ring, len(workers))
		w.from = make([]*rte.Ring, len(workers))
		w.handed = rte.NewBurst(w.rx.Cap())
		w.tags = make([]int, w.rx.Cap())
		w.inbox = make(chan datapath.Neighbor, 256)
	}
	for i, w := range workers {
		for j, o := range workers {
			if i != j {
				r := rte.NewRing(handRing)
				w.to[j], o.from[i] = r, r
				w.peers = append(w.peers, o)
			}
		}
	}
}

// SetTap makes tap (a net_tap port with a queue per worker) port's
// exception path: packets the datapath passes go to the kernel through it
// (moved, not copied), and what the kernel sends on it leaves through
// port; each worker uses its own queue of both.
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
	if w.handed != nil {
		w.handed.Close()
	}
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
	w.neighbors()
	n := 0
	for in := range w.ports {
		n += w.PollPort(in)
		if w.taps != nil && w.taps[in] != nil {
			n += w.pollTap(in)
		}
	}
	return n + w.pollHanded()
}

// neighbors applies what the other workers learnt and tells them what
// this one did.
func (w *Worker) neighbors() {
	if w.inbox == nil {
		return
	}
	for {
		select {
		case nb := <-w.inbox:
			_ = w.dp.SetNeighbor(nb.Port, nb.Addr, nb.MAC[:])
			continue
		default:
		}
		break
	}
	for _, nb := range w.dp.Learnt() {
		for _, p := range w.peers {
			select {
			case p.inbox <- nb:
			default: // full: the peer asks again (arp.go)
			}
		}
	}
}

// pollHanded forwards what the other workers handed this one.
func (w *Worker) pollHanded() int {
	total := 0
	for _, r := range w.from {
		if r == nil || r.Len() == 0 {
			continue
		}
		n := w.handed.Take(r, w.tags)
		for i := range n {
			w.forward(w.handed, i, w.tags[i])
		}
		w.handed.Free()
		w.flush()
		w.Taken += uint64(n)
		total += n
	}
	return total
}

// pollTap sends what the kernel wrote to port's TAP out of port.
func (w *Worker) pollTap(port int) int {
	n := w.tapRx.Rx(*w.taps[port], w.queue)
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

// PollPort receives one burst from port in and forwards it, handing the
// packets other workers own to them.
func (w *Worker) PollPort(in int) int {
	n := w.rx.Rx(w.ports[in], w.queue)
	w.Rx += uint64(n)
	for i := range n {
		if w.to != nil && !w.inlinePort(in) {
			if o := w.dp.Owner(w.rx.Data(i)); o != w.queue {
				if w.rx.Hand(i, w.to[o], in) {
					w.Handed++
				} else {
					w.rx.Keep(i, false)
					w.HandDropped++
				}
				continue
			}
		}
		w.forward(w.rx, i, in)
	}
	w.rx.Free()
	w.flush()
	return n
}

// forward runs packet i of b, received on port in, through the datapath
// and moves it to the burst of the port it leaves by (or the TAP's).
func (w *Worker) forward(b *rte.Burst, i, in int) {
	if w.inlinePort(in) {
		w.forwardInline(b, i, in)
		return
	}
	if w.Observe != nil {
		w.Observe(in, b.Data(i), w.now)
	}
	room, off := b.Room(i)
	plen := len(b.Data(i))
	v, out, noff, nlen := w.dp.ProcessAt(in, room, off, plen)
	if noff != off || nlen != plen {
		b.SetView(i, noff, nlen) // within room: cannot fail
	}
	switch v {
	case datapath.Tx, datapath.Redirect:
		if w.Observe != nil {
			w.Observe(out, b.Data(i), w.now)
		}
		// The output bursts are as large as the input one and are
		// sent after it: Move cannot find them full.
		b.Move(i, w.tx[out])
	case datapath.Pass:
		if w.Passed != nil {
			w.Passed(in, b.Data(i))
		}
		if w.taps != nil && w.taps[in] != nil {
			b.Move(i, w.tapTx[in])
		} else {
			b.Keep(i, false)
		}
	default:
		b.Keep(i, false)
	}
}

// flush sends what one input burst left in the output bursts, and the
// ARP requests the datapath asks for.
func (w *Worker) flush() {
	for out, b := range w.tx {
		if k := b.Len(); k > 0 {
			w.TxDropped += uint64(k - b.Tx(w.ports[out], w.queue))
		}
	}
	for port, b := range w.tapTx {
		if b != nil && b.Len() > 0 {
			k := b.Len()
			sent := b.Tx(*w.taps[port], w.queue)
			w.ToKernel += uint64(sent)
			w.TxDropped += uint64(k - sent)
		}
	}
	w.resolve()
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

//go:build dpdk

package rte

/*
#cgo pkg-config: libdpdk
#include <stdlib.h>
#include <string.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_bus.h>
#include <rte_dev.h>

// One packet of a burst as Go sees it: where its bytes start, how many,
// and how far the buffer lets them move (prepend headers, grow).
struct mbx_pkt {
	void *data;
	uint16_t len;
	uint16_t headroom;
	uint16_t tailroom;
	uint16_t pad;
};

static void mbx_describe(struct rte_mbuf *m, struct mbx_pkt *p)
{
	p->data = rte_pktmbuf_mtod(m, void *);
	p->len = rte_pktmbuf_data_len(m);
	p->headroom = rte_pktmbuf_headroom(m);
	p->tailroom = rte_pktmbuf_tailroom(m);
}

static int mbx_rx(uint16_t port, uint16_t q, struct rte_mbuf **bufs, struct mbx_pkt *pkts, uint16_t n)
{
	uint16_t got = rte_eth_rx_burst(port, q, bufs, n);
	for (uint16_t i = 0; i < got; i++) {
		// Multi-segment packets are not handled: drop to one segment's view.
		mbx_describe(bufs[i], &pkts[i]);
	}
	return got;
}

// mbx_commit writes Go's view (data pointer, length) back into the mbuf.
static void mbx_commit(struct rte_mbuf *m, const struct mbx_pkt *p)
{
	m->data_off = (uint16_t)((char *)p->data - (char *)m->buf_addr);
	m->data_len = p->len;
	m->pkt_len = p->len;
}

// mbx_tx sends pkts[0:n] whose keep[i] is 1, frees those with 0 (keep[i]
// 2: moved to another burst, not this one's) and whatever the port did not
// take. Returns how many were sent.
static int mbx_tx(uint16_t port, uint16_t q, struct rte_mbuf **bufs, struct mbx_pkt *pkts,
		  const uint8_t *keep, uint16_t n, struct rte_mbuf **out)
{
	uint16_t k = 0;
	for (uint16_t i = 0; i < n; i++) {
		if (keep && keep[i] == 2)
			continue; // moved to another burst
		if (keep && !keep[i]) {
			rte_pktmbuf_free(bufs[i]);
			continue;
		}
		mbx_commit(bufs[i], &pkts[i]);
		out[k++] = bufs[i];
	}
	uint16_t sent = rte_eth_tx_burst(port, q, out, k);
	for (uint16_t i = sent; i < k; i++)
		rte_pktmbuf_free(out[i]);
	return sent;
}

static void mbx_free(struct rte_mbuf **bufs, const uint8_t *keep, uint16_t n)
{
	for (uint16_t i = 0; i < n; i++)
		if (keep[i] != 2)
			rte_pktmbuf_free(bufs[i]);
}

static int mbx_alloc(struct rte_mempool *mp, struct rte_mbuf **bufs, struct mbx_pkt *pkts, uint16_t n)
{
	if (rte_pktmbuf_alloc_bulk(mp, bufs, n) != 0)
		return -1;
	for (uint16_t i = 0; i < n; i++)
		mbx_describe(bufs[i], &pkts[i]);
	return 0;
}

static int mbx_errno(void) { return rte_errno; }

// mbx_lcore_cpus writes the CPU of each enabled lcore, main first.
static int mbx_lcore_cpus(int *cpus, int max)
{
	int n = 0;
	unsigned lc;
	RTE_LCORE_FOREACH(lc) {
		if (n < max)
			cpus[n++] = rte_lcore_to_cpu_id(lc);
	}
	return n;
}

// mbx_pool_tiled is a packet pool whose elements are exactly one 4 KB page
// and not spread (RTE_MEMPOOL_F_NO_SPREAD), so without hugepages no buffer
// crosses a page boundary: an AF_XDP socket drops descriptors that do
// (measured: ~5% of full-size frames lost with the default 2.3 KB
// elements), and its UMEM takes no frames under 2 KB, which after its
// headroom could not hold a full-size frame.
static struct rte_mempool *mbx_pool_tiled(const char *name, unsigned n)
{
	struct rte_pktmbuf_pool_private priv;
	unsigned elt = 4096 - 64; // the object header is 64 bytes
	uint16_t room = elt - sizeof(struct rte_mbuf);
	struct rte_mempool *mp = rte_mempool_create_empty(name, n, elt, 256, sizeof(priv),
		rte_socket_id(), RTE_MEMPOOL_F_NO_SPREAD);
	if (!mp)
		return NULL;
	if (rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), NULL) != 0)
		goto fail;
	memset(&priv, 0, sizeof(priv));
	priv.mbuf_data_room_size = room;
	rte_pktmbuf_pool_init(mp, &priv);
	if (rte_mempool_populate_default(mp) < 0)
		goto fail;
	rte_mempool_obj_iter(mp, rte_pktmbuf_init, NULL);
	return mp;
fail:
	rte_mempool_free(mp);
	return NULL;
}

// mbx_port_setup configures nrxq receive queues (queue q filling from
// pools[q], or pools[0] with one pool) and ntxq send queues; with several
// receive queues, RSS on the IP addresses and ports where the PMD has it.
static int mbx_port_setup(uint16_t port, uint16_t nrxq, uint16_t ntxq, uint16_t ndesc,
			  struct rte_mempool **pools, uint16_t npools)
{
	struct rte_eth_conf conf;
	struct rte_eth_dev_info info;
	memset(&conf, 0, sizeof(conf));
	int rc = rte_eth_dev_info_get(port, &info);
	if (rc < 0)
		return rc;
	uint64_t rss = (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP) & info.flow_type_rss_offloads;
	if (nrxq > 1 && rss) {
		conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		conf.rx_adv_conf.rss_conf.rss_hf = rss;
	}
	rc = rte_eth_dev_configure(port, nrxq, ntxq, &conf);
	if (rc < 0)
		return rc;
	uint16_t nrx = ndesc, ntx = ndesc;
	rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nrx, &ntx);
	if (rc < 0)
		return rc;
	int socket = rte_eth_dev_socket_id(port);
	if (socket < 0)
		socket = 0;
	for (uint16_t q = 0; q < nrxq; q++) {
		rc = rte_eth_rx_queue_setup(port, q, nrx, socket, NULL, pools[q < npools ? q : 0]);
		if (rc < 0)
			return rc;
	}
	for (uint16_t q = 0; q < ntxq; q++) {
		rc = rte_eth_tx_queue_setup(port, q, ntx, socket, NULL);
		if (rc < 0)
			return rc;
	}
	return 0;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// errorf names what failed with DPDK's message for code (a negative errno
// or rte_errno).
func errorf(what string, code C.int) error {
	if code < 0 {
		code = -code
	}
	return fmt.Errorf("%s: %s", what, C.GoString(C.rte_strerror(code)))
}

var eal struct {
	sync.Mutex
	done bool
	err  error
}

// Init initialises the EAL once per process with args (the EAL's own
// command line, without a program name). It cannot be repeated: after a
// failure the process must exit. The calling OS thread becomes the main
// lcore's (its CPU affinity is set), so Init runs on a thread of its own
// that is never handed back to the Go scheduler.
func Init(args []string) error {
	eal.Lock()
	defer eal.Unlock()
	if eal.done {
		if eal.err != nil {
			return fmt.Errorf("the DPDK EAL failed to initialise earlier in this process: %w", eal.err)
		}
		return errors.New("the DPDK EAL is already initialised in this process")
	}
	eal.done = true
	argv := make([]*C.char, 0, len(args)+1)
	argv = append(argv, C.CString("mbx"))
	for _, a := range args {
		argv = append(argv, C.CString(a))
	}
	cargv := (**C.char)(C.malloc(C.size_t(len(argv)) * C.size_t(unsafe.Sizeof(argv[0]))))
	copy(unsafe.Slice(cargv, len(argv)), argv)
	res := make(chan C.int)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread keeps EAL's affinity
		rc := C.rte_eal_init(C.int(len(argv)), cargv)
		if rc < 0 {
			rc = -C.mbx_errno()
		}
		res <- rc
	}()
	if rc := <-res; rc < 0 {
		eal.err = errorf("DPDK EAL initialisation", rc)
		removeRuntimeDir()
		return eal.err
	}
	return nil
}

// LcoreCPUs is the CPU of each lcore the EAL runs (its -l list), the
// main lcore's first: one polling worker each.
func LcoreCPUs() []int {
	var cpus [C.RTE_MAX_LCORE]C.int
	n := int(C.mbx_lcore_cpus(&cpus[0], C.RTE_MAX_LCORE))
	out := make([]int, n)
	for i := range n {
		out[i] = int(cpus[i])
	}
	return out
}

// removeRuntimeDir removes the EAL's runtime directory and its parent
// when they are empty (a failed init, or --no-shconf, leaves them so).
func removeRuntimeDir() {
	if dir := C.GoString(C.rte_eal_get_runtime_dir()); dir != "" {
		_ = os.Remove(dir)
		_ = os.Remove(filepath.Dir(dir))
	}
}

// Cleanup releases the EAL's resources (hugepage files, runtime
// directory) before the process exits.
func Cleanup() {
	eal.Lock()
	defer eal.Unlock()
	if eal.done && eal.err == nil {
		C.rte_eal_cleanup()
		removeRuntimeDir()
	}
}

// Mempool is a pool of packet buffers.
type Mempool struct{ p *C.struct_rte_mempool }

// NewMempool creates a pool of n packet buffers (n+1 a power of two is
// the most memory-efficient) with the default data room (2 KB + headroom).
func NewMempool(name string, n int) (*Mempool, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	p := C.rte_pktmbuf_pool_create(cn, C.uint(n), 256, 0, C.RTE_MBUF_DEFAULT_BUF_SIZE, C.int(C.rte_socket_id()))
	if p == nil {
		return nil, errorf("mempool "+name, C.mbx_errno())
	}
	return &Mempool{p}, nil
}

// NewMempoolTiled is a pool of n buffers of one 4 KB page each (3904 bytes
// of data room) that never cross a page: what an AF_XDP port needs when
// the EAL runs without hugepages.
func NewMempoolTiled(name string, n int) (*Mempool, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	p := C.mbx_pool_tiled(cn, C.uint(n))
	if p == nil {
		return nil, errorf("mempool "+name, C.mbx_errno())
	}
	return &Mempool{p}, nil
}

// ElementSize is one buffer's size in the pool's memory.
func (m *Mempool) ElementSize() int {
	return int(m.p.header_size) + int(m.p.elt_size) + int(m.p.trailer_size)
}

// Free returns the pool's memory (every buffer must be back in it).
func (m *Mempool) Free() { C.rte_mempool_free(m.p) }

// Available is how many buffers are in the pool now.
func (m *Mempool) Available() int { return int(C.rte_mempool_avail_count(m.p)) }

// Port is an ethdev port.
type Port uint16

// Ports is how many ports the EAL probed (vdevs included).
func Ports() int { return int(C.rte_eth_dev_count_avail()) }

// PortByName finds a port by its device name (e.g. "net_af_xdp0").
func PortByName(name string) (Port, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var id C.uint16_t
	if rc := C.rte_eth_dev_get_port_by_name(cn, &id); rc < 0 {
		return 0, fmt.Errorf("no DPDK port %q (give the EAL --vdev=%s,... or a PCI device): %w", name, name, errorf("lookup", rc))
	}
	return Port(id), nil
}

// AttachVdev creates a virtual device after Init (hotplug), e.g.
// "net_tap0,iface=mbxk0,mac=02:00:00:00:00:01", and returns its port.
func AttachVdev(devargs string) (Port, error) {
	ca := C.CString(devargs)
	defer C.free(unsafe.Pointer(ca))
	if rc := C.rte_dev_probe(ca); rc < 0 {
		return 0, errorf("creating "+devargs, rc)
	}
	name, _, _ := strings.Cut(devargs, ",")
	return PortByName(name)
}

// Name is the port's device name.
func (p Port) Name() string {
	var buf [C.RTE_ETH_NAME_MAX_LEN]C.char
	if C.rte_eth_dev_get_name_by_port(C.uint16_t(p), &buf[0]) < 0 {
		return fmt.Sprintf("port%d", p)
	}
	return C.GoString(&buf[0])
}

// Setup configures rx and tx queues of ndesc descriptors each, receiving
// into mp, and starts the port in promiscuous mode.
func (p Port) Setup(rxq, txq, ndesc int, mp *Mempool) error {
	return p.SetupQueues(rxq, txq, ndesc, []*Mempool{mp})
}

// SetupQueues is Setup with a pool per receive queue (pools[q] for queue q;
// with fewer pools than queues, pools[0] for the rest): an AF_XDP queue's
// UMEM is its pool's memory, which two queues must not share. Several
// receive queues get RSS where the PMD has it.
func (p Port) SetupQueues(rxq, txq, ndesc int, pools []*Mempool) error {
	cp := (**C.struct_rte_mempool)(C.calloc(C.size_t(len(pools)), C.size_t(unsafe.Sizeof(pools[0].p))))
	defer C.free(unsafe.Pointer(cp))
	for i, mp := range pools {
		unsafe.Slice(cp, len(pools))[i] = mp.p
	}
	if rc := C.mbx_port_setup(C.uint16_t(p), C.uint16_t(rxq), C.uint16_t(txq), C.uint16_t(ndesc), cp, C.uint16_t(len(pools))); rc < 0 {
		return errorf(fmt.Sprintf("configuring %s", p.Name()), rc)
	}
	if rc := C.rte_eth_dev_start(C.uint16_t(p)); rc < 0 {
		return errorf(fmt.Sprintf("starting %s", p.Name()), rc)
	}
	C.rte_eth_promiscuous_enable(C.uint16_t(p)) // not every PMD has it
	return nil
}

// Stop stops the port; Setup may configure it again.
func (p Port) Stop() { C.rte_eth_dev_stop(C.uint16_t(p)) }

// Close releases a stopped port (a vdev's port is gone after it).
func (p Port) Close() { C.rte_eth_dev_close(C.uint16_t(p)) }

// MTU is the port's MTU (0 when the PMD does not say).
func (p Port) MTU() int {
	var m C.uint16_t
	if C.rte_eth_dev_get_mtu(C.uint16_t(p), &m) < 0 {
		return 0
	}
	return int(m)
}

// MAC is the port's Ethernet address.
func (p Port) MAC() (net.HardwareAddr, error) {
	var a C.struct_rte_ether_addr
	if rc := C.rte_eth_macaddr_get(C.uint16_t(p), &a); rc < 0 {
		return nil, errorf("MAC address", rc)
	}
	return C.GoBytes(unsafe.Pointer(&a.addr_bytes[0]), 6), nil
}

// Stats are a port's counters.
type Stats struct {
	InPackets, OutPackets, InBytes, OutBytes uint64
	InMissed, InErrors, OutErrors, NoMbuf    uint64
}

// Stats reads the port's counters.
func (p Port) Stats() (Stats, error) {
	var s C.struct_rte_eth_stats
	if rc := C.rte_eth_stats_get(C.uint16_t(p), &s); rc < 0 {
		return Stats{}, errorf("port stats", rc)
	}
	return Stats{uint64(s.ipackets), uint64(s.opackets), uint64(s.ibytes), uint64(s.obytes),
		uint64(s.imissed), uint64(s.ierrors), uint64(s.oerrors), uint64(s.rx_nombuf)}, nil
}

// packet mirrors struct mbx_pkt.
type packet struct {
	data                    unsafe.Pointer
	len, headroom, tailroom uint16
	_                       uint16
}

// Burst is up to Cap packets received, allocated or about to be sent.
// Its arrays live in C memory; one Burst serves one goroutine.
type Burst struct {
	bufs  **C.struct_rte_mbuf
	out   **C.struct_rte_mbuf
	pkts  []packet
	keep  []uint8
	ckeep *C.uint8_t
	n     int
}

// NewBurst makes a burst of up to size packets.
func NewBurst(size int) *Burst {
	ptr := C.size_t(unsafe.Sizeof((*C.struct_rte_mbuf)(nil)))
	b := &Burst{
		bufs:  (**C.struct_rte_mbuf)(C.calloc(C.size_t(size), ptr)),
		out:   (**C.struct_rte_mbuf)(C.calloc(C.size_t(size), ptr)),
		ckeep: (*C.uint8_t)(C.calloc(C.size_t(size), 1)),
	}
	cp := C.calloc(C.size_t(size), C.size_t(unsafe.Sizeof(C.struct_mbx_pkt{})))
	b.pkts = unsafe.Slice((*packet)(cp), size)
	b.keep = unsafe.Slice((*uint8)(unsafe.Pointer(b.ckeep)), size)
	return b
}

// Close frees the burst's arrays (not its packets: send or Free them first).
func (b *Burst) Close() {
	C.free(unsafe.Pointer(b.bufs))
	C.free(unsafe.Pointer(b.out))
	C.free(unsafe.Pointer(b.ckeep))
	C.free(unsafe.Pointer(&b.pkts[0]))
}

// Cap is the burst's size.
func (b *Burst) Cap() int { return len(b.pkts) }

// Len is how many packets the burst holds.
func (b *Burst) Len() int { return b.n }

// Data is packet i's bytes, writable in place; its capacity reaches the
// buffer's end, so SetLen can grow it. Valid until the burst is sent or
// freed.
func (b *Burst) Data(i int) []byte {
	p := &b.pkts[i]
	return unsafe.Slice((*byte)(p.data), int(p.len)+int(p.tailroom))[:p.len]
}

// Room is packet i's whole buffer and where its bytes start in it: the
// packet is room[off:off+len(Data(i))], with headroom before it.
func (b *Burst) Room(i int) (room []byte, off int) {
	p := &b.pkts[i]
	start := unsafe.Add(p.data, -int(p.headroom))
	return unsafe.Slice((*byte)(start), int(p.headroom)+int(p.len)+int(p.tailroom)), int(p.headroom)
}

// SetView makes packet i room[off:off+n] of its Room.
func (b *Burst) SetView(i, off, n int) error {
	p := &b.pkts[i]
	total := int(p.headroom) + int(p.len) + int(p.tailroom)
	if off < 0 || n < 0 || off+n > total {
		return fmt.Errorf("packet view %d+%d: the buffer holds %d", off, n, total)
	}
	p.data = unsafe.Add(p.data, off-int(p.headroom))
	p.headroom, p.len, p.tailroom = uint16(off), uint16(n), uint16(total-off-n)
	return nil
}

// SetLen sets packet i's length (at most its data plus tailroom).
func (b *Burst) SetLen(i, n int) error {
	p := &b.pkts[i]
	if n < 0 || n > int(p.len)+int(p.tailroom) {
		return fmt.Errorf("packet length %d: the buffer holds %d", n, int(p.len)+int(p.tailroom))
	}
	p.tailroom = uint16(int(p.tailroom) + int(p.len) - n)
	p.len = uint16(n)
	return nil
}

// Prepend grows packet i at the front by n bytes (for an outer header);
// the new bytes are the first n of Data(i).
func (b *Burst) Prepend(i, n int) error {
	p := &b.pkts[i]
	if n < 0 || n > int(p.headroom) {
		return fmt.Errorf("prepending %d bytes: %d of headroom", n, p.headroom)
	}
	p.data = unsafe.Add(p.data, -n)
	p.headroom -= uint16(n)
	p.len += uint16(n)
	return nil
}

// Adj removes n bytes from packet i's front (an outer header).
func (b *Burst) Adj(i, n int) error {
	p := &b.pkts[i]
	if n < 0 || n > int(p.len) {
		return fmt.Errorf("removing %d bytes of a %d-byte packet", n, p.len)
	}
	p.data = unsafe.Add(p.data, n)
	p.headroom += uint16(n)
	p.len -= uint16(n)
	return nil
}

// Keep marks whether packet i is sent by the next Tx (default: yes) or
// freed.
func (b *Burst) Keep(i int, keep bool) {
	if keep {
		b.keep[i] = 1
	} else {
		b.keep[i] = 0
	}
}

func (b *Burst) reset(n int) {
	b.n = n
	for i := range n {
		b.keep[i] = 1
	}
}

// Rx receives up to Cap packets from queue q of port, replacing what the
// burst held (which must have been sent or freed).
func (b *Burst) Rx(port Port, q int) int {
	n := int(C.mbx_rx(C.uint16_t(port), C.uint16_t(q), b.bufs, (*C.struct_mbx_pkt)(unsafe.Pointer(&b.pkts[0])), C.uint16_t(len(b.pkts))))
	b.reset(n)
	return n
}

// Alloc fills the burst with n empty packets from mp.
func (b *Burst) Alloc(mp *Mempool, n int) error {
	if n > len(b.pkts) {
		return fmt.Errorf("allocating %d packets in a burst of %d", n, len(b.pkts))
	}
	if C.mbx_alloc(mp.p, b.bufs, (*C.struct_mbx_pkt)(unsafe.Pointer(&b.pkts[0])), C.uint16_t(n)) < 0 {
		return errors.New("mempool exhausted")
	}
	b.reset(n)
	return nil
}

// Tx sends the kept packets on queue q of port, frees the others and
// whatever the port did not take, and empties the burst. It returns how
// many were sent.
func (b *Burst) Tx(port Port, q int) int {
	if b.n == 0 {
		return 0
	}
	sent := C.mbx_tx(C.uint16_t(port), C.uint16_t(q), b.bufs, (*C.struct_mbx_pkt)(unsafe.Pointer(&b.pkts[0])),
		b.ckeep, C.uint16_t(b.n), b.out)
	b.n = 0
	return int(sent)
}

// Free returns every packet of the burst to its pool (but those moved).
func (b *Burst) Free() {
	C.mbx_free(b.bufs, b.ckeep, C.uint16_t(b.n))
	b.n = 0
}

// Move hands packet i to dst (appended; false when dst is full): it leaves
// this burst's Tx and Free. Packets going out of another port are moved to
// that port's burst.
func (b *Burst) Move(i int, dst *Burst) bool {
	if dst.n == len(dst.pkts) {
		return false
	}
	bufs := unsafe.Slice(b.bufs, len(b.pkts))
	dbufs := unsafe.Slice(dst.bufs, len(dst.pkts))
	dbufs[dst.n] = bufs[i]
	dst.pkts[dst.n] = b.pkts[i]
	dst.keep[dst.n] = 1
	dst.n++
	b.keep[i] = 2
	return true
}

// Package xsk is a small AF_XDP socket: Go programs consume a brick output
// (an `xsk:NAME` output) without a kernel interface in between, and the
// inline stream monitor receives the packets its handlers judge and sends
// on the ones they let through.
//
// Written here rather than taken from asavie/xdp or slavc/xdp: the platform
// notes rate both prototype quality (ring indices read and written without
// atomics), and a copy-mode socket over golang.org/x/sys/unix is small.
// Copy mode works on every driver (veth has no zero-copy).
package xsk

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	frameSize = 4096
	numFrames = 4096
	ringSize  = 2048 // every ring; a power of two
	// The first ringSize frames of the UMEM are the kernel's to fill
	// (receive); the rest are for sending.
	txBase = ringSize * frameSize
)

// ring is one of the shared producer/consumer rings.
type ring struct {
	mem      []byte
	producer *uint32
	consumer *uint32
	desc     unsafe.Pointer
	mask     uint32
}

func mapRing(fd int, off unix.XDPRingOffset, pgoff int64, entries uint32, entrySize uintptr) (ring, error) {
	size := int(off.Desc + uint64(entries)*uint64(entrySize))
	mem, err := unix.Mmap(fd, pgoff, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return ring{}, err
	}
	base := unsafe.Pointer(&mem[0])
	return ring{
		mem:      mem,
		producer: (*uint32)(unsafe.Add(base, off.Producer)),
		consumer: (*uint32)(unsafe.Add(base, off.Consumer)),
		desc:     unsafe.Add(base, off.Desc),
		mask:     entries - 1,
	}, nil
}

// Socket is an AF_XDP socket receiving from one queue of one interface.
type Socket struct {
	fd   int
	umem []byte
	rx   ring
	fill ring
	tx   ring
	comp ring
	free []uint64 // send frames not in the kernel's hands
	// TxFull counts packets Send refused: every send frame was in flight.
	TxFull uint64
}

// Open creates a socket bound to queue of ifindex (copy mode). Packets
// reach it only once its fd is in an XSKMAP the interface's XDP program
// redirects to (Consumer does that).
func Open(ifindex, queue int) (*Socket, error) {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("AF_XDP socket: %w", err)
	}
	s := &Socket{fd: fd}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if s.umem, err = unix.Mmap(-1, 0, frameSize*numFrames, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("AF_XDP umem: %w", err)
	}
	reg := unix.XDPUmemReg{Addr: uint64(uintptr(unsafe.Pointer(&s.umem[0]))), Len: uint64(len(s.umem)), Size: frameSize}
	if err := setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		return nil, fmt.Errorf("AF_XDP umem registration: %w", err)
	}
	for _, o := range []int{unix.XDP_UMEM_FILL_RING, unix.XDP_UMEM_COMPLETION_RING, unix.XDP_RX_RING, unix.XDP_TX_RING} {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, o, ringSize); err != nil {
			return nil, fmt.Errorf("AF_XDP ring size: %w", err)
		}
	}
	var off unix.XDPMmapOffsets
	l := uint32(unsafe.Sizeof(off))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return nil, fmt.Errorf("AF_XDP ring offsets: %w", e)
	}
	if s.rx, err = mapRing(fd, off.Rx, unix.XDP_PGOFF_RX_RING, ringSize, unsafe.Sizeof(unix.XDPDesc{})); err != nil {
		return nil, fmt.Errorf("AF_XDP rx ring: %w", err)
	}
	if s.tx, err = mapRing(fd, off.Tx, unix.XDP_PGOFF_TX_RING, ringSize, unsafe.Sizeof(unix.XDPDesc{})); err != nil {
		return nil, fmt.Errorf("AF_XDP tx ring: %w", err)
	}
	if s.fill, err = mapRing(fd, off.Fr, unix.XDP_UMEM_PGOFF_FILL_RING, ringSize, 8); err != nil {
		return nil, fmt.Errorf("AF_XDP fill ring: %w", err)
	}
	if s.comp, err = mapRing(fd, off.Cr, unix.XDP_UMEM_PGOFF_COMPLETION_RING, ringSize, 8); err != nil {
		return nil, fmt.Errorf("AF_XDP completion ring: %w", err)
	}
	// Give the kernel ringSize frames to fill.
	for i := uint32(0); i < ringSize; i++ {
		*(*uint64)(unsafe.Add(s.fill.desc, uintptr(i)*8)) = uint64(i) * frameSize
	}
	atomic.StoreUint32(s.fill.producer, ringSize)
	for i := uint64(0); i < numFrames-ringSize; i++ {
		s.free = append(s.free, txBase+i*frameSize)
	}
	if err := unix.Bind(fd, &unix.SockaddrXDP{Flags: unix.XDP_COPY, Ifindex: uint32(ifindex), QueueID: uint32(queue)}); err != nil {
		return nil, fmt.Errorf("binding AF_XDP to ifindex %d queue %d: %w", ifindex, queue, err)
	}
	ok = true
	return s, nil
}

func setsockopt(fd, opt int, p unsafe.Pointer, n uintptr) error {
	if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), n, 0); e != 0 {
		return e
	}
	return nil
}

// FD is the socket, for an XSKMAP.
func (s *Socket) FD() int { return s.fd }

// Receive calls fn with each frame waiting in the ring (the slice is valid
// only during the call) and returns how many it delivered; with none
// waiting it polls up to timeout first.
func (s *Socket) Receive(timeout time.Duration, fn func(frame []byte)) (int, error) {
	cons := *s.rx.consumer
	prod := atomic.LoadUint32(s.rx.producer)
	if prod == cons {
		pfd := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(timeout.Milliseconds())); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, err
		}
		prod = atomic.LoadUint32(s.rx.producer)
	}
	n := 0
	fillProd := *s.fill.producer
	for ; cons != prod; cons++ {
		d := (*unix.XDPDesc)(unsafe.Add(s.rx.desc, uintptr(cons&s.rx.mask)*unsafe.Sizeof(unix.XDPDesc{})))
		fn(s.umem[d.Addr : d.Addr+uint64(d.Len)])
		// The frame goes straight back to the kernel (fill ring).
		*(*uint64)(unsafe.Add(s.fill.desc, uintptr(fillProd&s.fill.mask)*8)) = d.Addr &^ (frameSize - 1)
		fillProd++
		n++
	}
	atomic.StoreUint32(s.rx.consumer, cons)
	atomic.StoreUint32(s.fill.producer, fillProd)
	return n, nil
}

// Send queues a copy of frame for transmission on the socket's interface
// (Flush hands the queue to the kernel). With every send frame in flight
// the packet is dropped and counted in TxFull.
func (s *Socket) Send(frame []byte) {
	if len(frame) > frameSize {
		s.TxFull++
		return
	}
	if len(s.free) == 0 {
		s.reclaim()
		if len(s.free) == 0 {
			s.Flush()
			s.reclaim()
		}
		if len(s.free) == 0 {
			s.TxFull++
			return
		}
	}
	addr := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	copy(s.umem[addr:], frame)
	prod := *s.tx.producer
	d := (*unix.XDPDesc)(unsafe.Add(s.tx.desc, uintptr(prod&s.tx.mask)*unsafe.Sizeof(unix.XDPDesc{})))
	d.Addr, d.Len, d.Options = addr, uint32(len(frame)), 0
	atomic.StoreUint32(s.tx.producer, prod+1)
}

// Flush asks the kernel to send what Send queued (copy mode sends only
// when asked) and takes back the frames it has sent.
func (s *Socket) Flush() error {
	if atomic.LoadUint32(s.tx.consumer) != atomic.LoadUint32(s.tx.producer) {
		_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		if e != 0 && e != unix.EAGAIN && e != unix.EBUSY && e != unix.ENOBUFS {
			return fmt.Errorf("AF_XDP send: %w", e)
		}
	}
	s.reclaim()
	return nil
}

// reclaim takes sent frames back from the completion ring.
func (s *Socket) reclaim() {
	cons := *s.comp.consumer
	prod := atomic.LoadUint32(s.comp.producer)
	for ; cons != prod; cons++ {
		s.free = append(s.free, *(*uint64)(unsafe.Add(s.comp.desc, uintptr(cons&s.comp.mask)*8)))
	}
	atomic.StoreUint32(s.comp.consumer, cons)
}

// Dropped is how many packets the kernel could not place in the ring.
func (s *Socket) Dropped() (uint64, error) {
	var st unix.XDPStatistics
	l := uint32(unsafe.Sizeof(st))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return 0, e
	}
	return st.Rx_dropped + st.Rx_ring_full + st.Rx_fill_ring_empty_descs, nil
}

// Close releases the socket; the kernel removes it from any XSKMAP.
func (s *Socket) Close() error {
	for _, r := range []ring{s.rx, s.fill, s.tx, s.comp} {
		if r.mem != nil {
			unix.Munmap(r.mem)
		}
	}
	if s.umem != nil {
		unix.Munmap(s.umem)
	}
	return unix.Close(s.fd)
}

package xdp

import "golang.org/x/sys/unix"

type timespec = unix.Timespec

func clockGettimeCoarse(ts *unix.Timespec) { _ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, ts) }

package xdp

import (
	"slices"

	"github.com/mbx-net/mbx/backend"
)

// counterNames follows enum counter in bpf/consts.h, in order (the
// backend-neutral list: every datapath counts the same events).
var counterNames = backend.DatapathCounters

// Indices of counterNames the backend reads itself.
var (
	cntConnNew      = slices.Index(counterNames, "conn_new")
	cntEntryDeleted = slices.Index(counterNames, "entry_deleted")
)

package xdp

import "slices"

// counterNames follows enum counter in bpf/consts.h, in order. Forwarded
// packets and bytes are counted per real server (stats map), not here.
var counterNames = []string{
	"rx",
	"pass_not_ours",
	"pass_malformed",
	"drop_malformed",
	"drop_fragment",
	"drop_no_conn",
	"drop_no_real",
	"drop_no_laddr",
	"drop_no_port",
	"conn_new",
	"conn_reuse",
	"tx",
	"redirect",
	"pass_no_neigh",
	"pass_fib",
	"drop_fib",
	"entry_deleted",
	"drop_too_big",
	"drop_no_neigh",
	"icmp_error",
	"icmp_too_big",
	"fragment",
}

// Indices of counterNames the backend reads itself.
var (
	cntConnNew      = slices.Index(counterNames, "conn_new")
	cntEntryDeleted = slices.Index(counterNames, "entry_deleted")
)

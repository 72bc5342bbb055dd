package xdp

// The generated bpfel files are committed so a plain `go build` needs no
// clang; `make generate` (or `go generate ./...`) rebuilds them identically.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -mcpu=v3 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type flow_key -type conn -type svc_key -type svc -type real -type laddr -type real_stats -type real_load -type config -type local_key -type sched_group -type flow_key6 -type conn6 -type local6_slot -type if_verdicts -type capture_cfg -type brick_node -type brick_engine -type brick_counters -type snat_rule -type mon_key -type mon_conn -type mon_iface -type mon_rec -type mon_stats mbx ../../bpf/mbx.c -- -I../../bpf

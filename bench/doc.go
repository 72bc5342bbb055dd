// Package bench measures mbx's datapath. `go test -bench . ./bench/` times
// the XDP program per packet with BPF_PROG_TEST_RUN and a restore harness;
// bench/run.sh runs the forwarder comparison through the lab. Results and
// exact commands are recorded in docs/benchmarks.md.
package bench

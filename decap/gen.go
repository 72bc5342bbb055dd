package decap

// The generated bpfel files are committed so a plain `go build` needs no
// clang; `go generate ./...` rebuilds them identically.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -mcpu=v3 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type decap_cfg decap ../bpf/decap.c -- -I../bpf

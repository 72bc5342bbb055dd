.PHONY: build generate test demo bench build-dpdk
build:
	go build -o mbx ./cmd/mbx
generate:
	bash scripts/setup.sh --clang
	go generate ./...
test:
	bash scripts/test.sh
demo:
	bash scripts/demo.sh
bench:
	bash bench/run.sh
build-dpdk:
	go build -tags dpdk -o mbx ./cmd/mbx

//go:build dpdk

package cli

import _ "github.com/mbx-net/mbx/backend/dpdk" // registers the dpdk backend

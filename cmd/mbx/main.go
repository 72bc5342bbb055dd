// Command mbx is the mbx middlebox: daemon, ipvsadm-compatible client and lab tools.
package main

import "github.com/mbx-net/mbx/cli"

func main() { cli.Main() }

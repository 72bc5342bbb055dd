package ipvsadm

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/control"
	"github.com/mbx-net/mbx/lb"
)

// Header is ipvsadm's first listing line. mbx reports its connection table
// capacity as IPVS reports its hash table size.
func header(w io.Writer, st *control.Status) {
	fmt.Fprintf(w, "IP Virtual Server version 1.2.1 (size=%d)\n", st.ConnsMax)
}

func svcName(k lb.ServiceKey) string {
	if k.IsMatch() {
		return "MATCH " + k.Match // as DPVS's ipvsadm lists SNAT services
	}
	return fmt.Sprintf("%s  %s", k.Proto, netip.AddrPortFrom(k.Addr, k.Port))
}

func selected(c *Command, k lb.ServiceKey) bool { return c.Service == nil || *c.Service == k }

// largeNum prints as ipvsadm's print_largenum: 8 columns; numbers of more
// than 8 digits in K (< 1e9), M (< 1e12), G (< 1e15) or T.
func largeNum(n uint64, exact bool) string {
	if exact || n < 100000000 {
		return fmt.Sprintf("%8d", n)
	}
	switch {
	case n < 1e9:
		return fmt.Sprintf("%7dK", n/1e3)
	case n < 1e12:
		return fmt.Sprintf("%7dM", n/1e6)
	case n < 1e15:
		return fmt.Sprintf("%7dG", n/1e9)
	}
	return fmt.Sprintf("%7dT", n/1e12)
}

// List prints -L/-l output (with -n semantics: mbx never resolves names).
func List(w io.Writer, c *Command, st *control.Status) {
	header(w, st)
	if c.Stats {
		fmt.Fprintf(w, "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n")
		fmt.Fprintf(w, "  -> RemoteAddress:Port\n")
	} else {
		fmt.Fprintf(w, "Prot LocalAddress:Port Scheduler Flags\n")
		fmt.Fprintf(w, "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
	}
	for _, s := range st.Services {
		if !selected(c, s.Key) {
			continue
		}
		if c.Stats {
			stats := func(name string, x backend.Counters) {
				fmt.Fprintf(w, "%-33s %s %s %s %s %s\n", name, largeNum(x.Conns, c.Exact), largeNum(x.InPkts, c.Exact),
					largeNum(x.OutPkts, c.Exact), largeNum(x.InBytes, c.Exact), largeNum(x.OutBytes, c.Exact))
			}
			stats(svcName(s.Key), s.Stats)
			for _, r := range s.RealStats {
				stats("  -> "+netip.AddrPortFrom(r.Addr, s.RealPort(r.Real)).String(), r.Counters)
			}
			continue
		}
		flags := ""
		if s.Persistence > 0 {
			flags = fmt.Sprintf(" persistent %d", s.Persistence)
		}
		fmt.Fprintf(w, "%s %s%s\n", svcName(s.Key), s.Scheduler, flags)
		for _, r := range s.RealStats {
			fmt.Fprintf(w, "  -> %-28s %-7s %-6d %-10d %-10d\n", netip.AddrPortFrom(r.Addr, s.RealPort(r.Real)),
				r.Forward.ForwardName(), r.Weight, r.Active, r.Inactive)
		}
	}
}

// Save prints -S output: commands that -R restores.
func Save(w io.Writer, c *Command, cfg *lb.Config) {
	for _, s := range cfg.Services {
		if !selected(c, s.Key) {
			continue
		}
		flag := "-t"
		if s.Key.Proto == lb.UDP {
			flag = "-u"
		}
		svc := netip.AddrPortFrom(s.Key.Addr, s.Key.Port).String()
		if s.Key.IsMatch() {
			flag, svc = "-H", s.Key.Match
		}
		persist := ""
		if s.Persistence > 0 {
			persist = fmt.Sprintf(" -p %d", s.Persistence)
		}
		fmt.Fprintf(w, "-A %s %s -s %s%s\n", flag, svc, s.Scheduler, persist)
		for _, r := range s.Reals {
			fmt.Fprintf(w, "-a %s %s -r %s %s -w %d\n", flag, svc, netip.AddrPortFrom(r.Addr, s.RealPort(r)), fwdFlag(r.Forward), r.Weight)
		}
		for _, la := range s.LocalAddrs {
			fmt.Fprintf(w, "--add-laddr -z %s %s %s -F %s\n", la.Addr, flag, svc, la.Dev)
		}
	}
}

func fwdFlag(f lb.Forward) string {
	switch f {
	case lb.FullNAT:
		return "-b"
	case lb.DirectRoute:
		return "-g"
	case lb.Tunnel:
		return "-i"
	case lb.Masquerade:
		return "-m"
	case lb.SNAT:
		return "-J"
	}
	return "-?"
}

// GetLaddr prints -G output as DPVS's ipvsadm does.
func GetLaddr(w io.Writer, c *Command, st *control.Status) {
	fmt.Fprintf(w, "%-20s %-8s %-20s %-10s %-10s\n", "VIP:VPORT", "TOTAL", "SNAT_IP", "CONFLICTS", "CONNS")
	for _, s := range st.Services {
		if !selected(c, s.Key) {
			continue
		}
		fmt.Fprintf(w, "%-20s %-8d\n", netip.AddrPortFrom(s.Key.Addr, s.Key.Port), len(s.LaddrStats))
		for _, la := range s.LaddrStats {
			fmt.Fprintf(w, "%-20s %-8s %-20s %-10d %-10d\n", "", "", la.Addr, la.Conflicts, la.Conns)
		}
	}
}

func expire(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}

// Conns prints -lnc output: ipvsadm's columns plus the Full-NAT local address.
func Conns(w io.Writer, c *Command, conns []backend.Conn) {
	fmt.Fprintf(w, "IPVS connection entries\n")
	fmt.Fprintf(w, "pro expire state       source                 virtual                local                  destination\n")
	for _, x := range conns {
		if c.Service != nil && (x.Proto != c.Service.Proto || x.Virtual != netip.AddrPortFrom(c.Service.Addr, c.Service.Port)) {
			continue
		}
		fmt.Fprintf(w, "%-3s %-6s %-11s %-22s %-22s %-22s %s\n", x.Proto, expire(x.Expire), x.State, x.Client, x.Virtual, x.Local, x.Real)
	}
}

// Usage is the help text of mbx ipvsadm.
var Usage = strings.TrimSpace(`
mbx ipvsadm: ipvsadm-compatible control of a running mbx daemon

  mbx ipvsadm -A|-E -t|-u VIP:PORT [-s rr|wrr|lc|wlc|sh|dh|mh]
  mbx ipvsadm -D -t|-u VIP:PORT
  mbx ipvsadm -C
  mbx ipvsadm -a|-e -t|-u VIP:PORT -r RIP[:PORT] -b [-w WEIGHT]
  mbx ipvsadm -d -t|-u VIP:PORT -r RIP[:PORT]
  mbx ipvsadm --add-laddr|-P -z LIP -t|-u VIP:PORT -F DEV
  mbx ipvsadm --del-laddr|-Q -z LIP -t|-u VIP:PORT
  mbx ipvsadm -G|--get-laddr [-t|-u VIP:PORT]
  mbx ipvsadm -L|-l [-n] [-c] [--stats] [-x] [-t|-u VIP:PORT]
  mbx ipvsadm --set TCP TCPFIN UDP       (idle timeouts in seconds; 0 keeps one)
  mbx ipvsadm -L --timeout
  mbx ipvsadm -S [-n] > rules
  mbx ipvsadm -R < rules

The daemon is found at --socket PATH (first argument), $MBX_SOCKET, or /run/mbx/mbx.sock.`)

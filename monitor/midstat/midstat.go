// Package midstat is mOS's midstat on mbx's monitor API: a table of
// connections with both sides' TCP states, packets, bytes and age, kept up
// to date by event handlers (connection start, state change, connection
// end), as the mOS sample does with its callbacks.
package midstat

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mbx-net/mbx/monitor"
)

// Row is one connection as `mbx stat --json` prints it (JSON Lines, one
// object per connection).
type Row struct {
	Proto           string     `json:"proto"`
	Client          string     `json:"client"`
	Server          string     `json:"server"`
	ClientState     string     `json:"client_state"`
	ServerState     string     `json:"server_state"`
	Start           float64    `json:"start"`
	End             float64    `json:"end"`
	Packets         [2]uint64  `json:"packets"`
	StreamBytes     [2]uint64  `json:"stream_bytes"`
	Retransmissions [2]uint64  `json:"retransmissions"`
	EndReason       string     `json:"end_reason"`
	VLAN            []uint16   `json:"vlan"`
	StreamSHA256    *[2]string `json:"stream_sha256,omitempty"`

	id   uint64
	conn *monitor.Conn
}

// Table follows a Monitor's connections.
type Table struct {
	rows   map[uint64]*Row
	ended  []*Row
	hashes bool
	keep   bool
}

// New attaches a table to m. With keepEnded the ended connections stay in
// the table (offline: the final table lists every connection); otherwise
// they leave it when they end (live, like netstat).
func New(m *monitor.Monitor, keepEnded, hashes bool) *Table {
	t := &Table{rows: map[uint64]*Row{}, hashes: hashes, keep: keepEnded}
	m.On(monitor.EvConnStart, monitor.HookSend, func(c *monitor.Conn, _ monitor.Side, _ monitor.Event) {
		t.rows[c.ID] = &Row{id: c.ID, conn: c}
		t.update(c)
	})
	m.On(monitor.EvStateChange, monitor.HookSend, t.onChange)
	m.On(monitor.EvStateChange, monitor.HookRecv, t.onChange)
	m.On(monitor.EvConnEnd, monitor.HookSend, func(c *monitor.Conn, _ monitor.Side, _ monitor.Event) {
		r := t.update(c)
		if r == nil {
			return
		}
		delete(t.rows, c.ID)
		if t.keep {
			t.ended = append(t.ended, r)
		}
	})
	return t
}

func (t *Table) onChange(c *monitor.Conn, _ monitor.Side, _ monitor.Event) { t.update(c) }

// update copies a connection's state into its row.
func (t *Table) update(c *monitor.Conn) *Row {
	r := t.rows[c.ID]
	if r == nil {
		return nil
	}
	t.fill(r, c)
	return r
}

// fill copies c into r.
func (t *Table) fill(r *Row, c *monitor.Conn) {
	r.Proto = "tcp"
	r.Client, r.Server = c.Client.String(), c.Server.String()
	r.ClientState = c.Sides[monitor.Client].State.String()
	r.ServerState = c.Sides[monitor.Server].State.String()
	r.Start = unix(c.Start)
	r.End = unix(c.Last)
	if c.EndReason != "" {
		r.End = unix(c.End)
	}
	r.EndReason = c.EndReason
	if r.EndReason == "" {
		r.EndReason = monitor.EndOpen
	}
	r.VLAN = c.VLAN
	if r.VLAN == nil {
		r.VLAN = []uint16{}
	}
	for s := range 2 {
		r.Packets[s] = c.Sides[s].Packets
		r.StreamBytes[s] = c.StreamBytes(monitor.Side(s))
		r.Retransmissions[s] = c.Sides[s].Retransmissions
	}
	if t.hashes {
		r.StreamSHA256 = &[2]string{hex.EncodeToString(c.StreamSHA256(monitor.Client)), hex.EncodeToString(c.StreamSHA256(monitor.Server))}
	}
}

// RowOf is c's row (without stream hashes).
func RowOf(c *monitor.Conn) Row {
	var t Table
	r := Row{id: c.ID}
	t.fill(&r, c)
	return r
}

// Refresh updates every open row from m (counters move without events).
func (t *Table) Refresh(m *monitor.Monitor) {
	m.Conns(func(c *monitor.Conn) {
		if c.EndReason == "" {
			t.update(c)
		}
	})
}

// Rows returns the table: ended connections first (in the order they
// ended), then open ones by start time.
func (t *Table) Rows() []Row {
	var out []Row
	for _, r := range t.ended {
		t.fill(r, r.conn) // late packets of an ended connection still count
		out = append(out, *r)
	}
	var open []*Row
	for _, r := range t.rows {
		open = append(open, r)
	}
	sort.Slice(open, func(i, j int) bool { return open[i].id < open[j].id })
	for _, r := range open {
		t.fill(r, r.conn)
		out = append(out, *r)
	}
	return out
}

// WriteJSON prints rows as JSON Lines.
func WriteJSON(w io.Writer, rows []Row) error {
	enc := json.NewEncoder(w)
	for i := range rows {
		if err := enc.Encode(&rows[i]); err != nil {
			return err
		}
	}
	return nil
}

// WriteTable prints rows as midstat's table, ages against now.
func WriteTable(w io.Writer, rows []Row, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tCLIENT\tSERVER\tCLIENT STATE\tSERVER STATE\tPACKETS C>S/S>C\tBYTES C>S/S>C\tAGE\tEND")
	for _, r := range rows {
		end := r.EndReason
		age := time.Duration((r.End - r.Start) * 1e9)
		if r.EndReason == monitor.EndOpen && !now.IsZero() {
			age = now.Sub(time.Unix(0, int64(r.Start*1e9)))
		}
		vlan := ""
		if len(r.VLAN) > 0 {
			var s []string
			for _, v := range r.VLAN {
				s = append(s, fmt.Sprint(v))
			}
			vlan = " vlan " + strings.Join(s, ".")
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%d/%d\t%d/%d\t%s\t%s\n", r.Proto, vlan, r.Client, r.Server, r.ClientState, r.ServerState,
			r.Packets[0], r.Packets[1], r.StreamBytes[0], r.StreamBytes[1], age.Round(time.Millisecond), end)
	}
	return tw.Flush()
}

func unix(ns int64) float64 { return float64(ns) / 1e9 }

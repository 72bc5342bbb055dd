package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/bricks"
	"github.com/mbx-net/mbx/lb"
)

// Client talks to a daemon's socket.
type Client struct {
	path string
	hc   *http.Client
}

// SocketPath returns flag if set, else $MBX_SOCKET, else DefaultSocket.
func SocketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("MBX_SOCKET"); env != "" {
		return env
	}
	return DefaultSocket
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}},
	}}
}

func (c *Client) call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://mbx"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			return fmt.Errorf("mbx daemon is not running (cannot connect to %s)", c.path)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e ErrorReply
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Do applies ops together.
func (c *Client) Do(ops []lb.Op) error { return c.DoCommand("", ops) }

// DoCommand applies ops together, naming the command line that asked.
func (c *Client) DoCommand(command string, ops []lb.Op) error {
	return c.call("POST", "/v1/ops", OpsRequest{Ops: ops, Command: command}, nil)
}

// Status reads the configuration with counters.
func (c *Client) Status() (*Status, error) {
	var s Status
	return &s, c.call("GET", "/v1/status", nil, &s)
}

// Config reads the running configuration.
func (c *Client) Config() (*lb.Config, error) {
	var cfg lb.Config
	return &cfg, c.call("GET", "/v1/config", nil, &cfg)
}

// Conns lists connections (limit 0: all).
func (c *Client) Conns(limit int) ([]backend.Conn, error) {
	var cs []backend.Conn
	return cs, c.call("GET", fmt.Sprintf("/v1/conns?limit=%d", limit), nil, &cs)
}

// Reload asks the daemon to re-read its configuration file.
func (c *Client) Reload() error { return c.call("POST", "/v1/reload", nil, nil) }

// LogLevel reads the daemon's log level.
func (c *Client) LogLevel() (string, error) {
	var l LogLevel
	err := c.call("GET", "/v1/log-level", nil, &l)
	return l.Level, err
}

// SetLogLevel changes the daemon's log level.
func (c *Client) SetLogLevel(level string) error {
	return c.call("POST", "/v1/log-level", LogLevel{Level: level}, nil)
}

// Stop asks the daemon to exit; with keep it leaves the data plane running
// for the next start to take over.
func (c *Client) Stop(keep bool) error {
	q := ""
	if keep {
		q = "?keep=1"
	}
	return c.call("POST", "/v1/stop"+q, nil, nil)
}

// Bricks applies brick verbs together (command is the command line, for
// the span and the log).
func (c *Client) Bricks(command string, ops []bricks.Op) error {
	return c.call("POST", "/v1/bricks", BricksRequest{Ops: ops, Command: command}, nil)
}

// BricksStatus reads the brick model and its counters.
func (c *Client) BricksStatus() (*BricksStatus, error) {
	var st BricksStatus
	return &st, c.call("GET", "/v1/bricks", nil, &st)
}

// MonitorFilter reads the running stream monitor's filter ("" for none).
func (c *Client) MonitorFilter() (string, error) {
	var f MonitorFilter
	err := c.call("GET", "/v1/monitor/filter", nil, &f)
	return f.Filter, err
}

// MonitorStatus reads the live stream monitor's table.
func (c *Client) MonitorStatus() (*MonitorStatus, error) {
	var st MonitorStatus
	return &st, c.call("GET", "/v1/monitor", nil, &st)
}

package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/mbx/mbx.sock"

// Server serves a Daemon's API on a unix socket.
type Server struct {
	// Stop, when set, is called by `mbx stop` (keep: hand the data plane over).
	Stop func(keep bool)

	d    *Daemon
	path string
	ln   net.Listener
	srv  *http.Server
}

// Listen creates the socket (mode 0600). A socket file left by a dead daemon
// is replaced; one that a live daemon answers on is an error.
func Listen(d *Daemon, path string) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another mbx daemon is running on %s (use --socket for a second instance)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, err
	}
	s := &Server{d: d, path: path, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/ops", s.ops)
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/config", s.config)
	mux.HandleFunc("GET /v1/conns", s.conns)
	mux.HandleFunc("POST /v1/stop", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, nil)
		if s.Stop != nil {
			go s.Stop(r.URL.Query().Get("keep") == "1")
		}
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, s.d.ReloadContext(r.Context(), "mbx reload"))
	})
	mux.HandleFunc("POST /v1/bricks", func(w http.ResponseWriter, r *http.Request) {
		var req BricksRequest
		if decodeOps(w, r, &req, func() int { return len(req.Ops) }) {
			reply(w, struct{}{}, s.d.BricksDo(r.Context(), req.Command, req.Ops))
		}
	})
	mux.HandleFunc("GET /v1/bricks", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.d.Bricks()
		reply(w, st, err)
	})
	mux.HandleFunc("GET /v1/monitor", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.d.MonitorStatus()
		reply(w, st, err)
	})
	mux.HandleFunc("GET /v1/monitor/filter", func(w http.ResponseWriter, r *http.Request) {
		reply(w, s.d.MonitorFilter(), nil)
	})
	mux.HandleFunc("GET /v1/log-level", func(w http.ResponseWriter, r *http.Request) {
		reply(w, LogLevel{Level: s.d.LogLevel()}, nil)
	})
	mux.HandleFunc("POST /v1/log-level", func(w http.ResponseWriter, r *http.Request) {
		var req LogLevel
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		reply(w, LogLevel{Level: req.Level}, s.d.SetLogLevelName(req.Level))
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(ln)
	return s, nil
}

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	os.Remove(s.path)
	return err
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(ErrorReply{Error: err.Error()})
		return
	}
	json.NewEncoder(w).Encode(v)
}

// decodeOps reads a request of operations into req; on a bad or empty one
// it replies with the error and returns false.
func decodeOps(w http.ResponseWriter, r *http.Request, req any, n func() int) bool {
	if err := json.NewDecoder(r.Body).Decode(req); err != nil {
		reply(w, nil, fmt.Errorf("bad request: %w", err))
		return false
	}
	if n() == 0 {
		reply(w, nil, errors.New("no operations"))
		return false
	}
	return true
}

func (s *Server) ops(w http.ResponseWriter, r *http.Request) {
	var req OpsRequest
	if decodeOps(w, r, &req, func() int { return len(req.Ops) }) {
		reply(w, struct{}{}, s.d.DoCommand(r.Context(), req.Command, req.Ops))
	}
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.d.Status()
	reply(w, st, err)
}

func (s *Server) config(w http.ResponseWriter, r *http.Request) {
	reply(w, s.d.Config(), nil)
}

func (s *Server) conns(w http.ResponseWriter, r *http.Request) {
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	c, err := s.d.Conns(limit)
	reply(w, c, err)
}

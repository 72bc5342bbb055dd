package lab

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// ServeHTTP runs the lab's real-server HTTP server: it answers every request
// with its own name and the client address it sees (what Full-NAT shows:
// the LIP, not the client), and /bytes?n=N with N bytes for downloads.
func ServeHTTP(name, listen string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		buf := make([]byte, 64<<10)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		for n > 0 {
			k := min(n, len(buf))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s: your address is %s\n", name, r.RemoteAddr)
	})
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}
